"""The one training loop: every algorithm family runs through `Trainer.run`.

What it needs from an algorithm and a feeder is declared in rl_runner/algos/contracts.py and
rl_runner/feeder.py; checkpoints are rl_runner/runstate.py's, results.json rl_runner/results.py's.
"""
from __future__ import annotations

import logging
import math
import shlex
import signal
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import tqdm
from omegaconf import DictConfig, OmegaConf

from rl_runner import config as config_checks
from rl_runner import runlog, runstate
from rl_runner.algos.build import build_algo
from rl_runner.algos.contracts import Algorithm, algo_name, check_metrics
from rl_runner.checkpoint import (load_checkpoint, rng_state, seed_everything,
                                  set_rng_state)
from rl_runner.demonstrations import expert_data
from rl_runner.envpool_env import EnvPoolVectorEnv
from rl_runner.envs import env_options, make_vec_env
from rl_runner.errors import UserError, describe
from rl_runner.evaluation import Evaluator
from rl_runner.feeder import Feeder
from rl_runner.logger import build_loggers, check_loggers
from rl_runner.offline import offline_feeder
from rl_runner.replay import ReplayFeeder
from rl_runner.results import write_results
from rl_runner.resume import resume_value
from rl_runner.rollout import RolloutCollector
from rl_runner.rollout_overlap import OverlappedCollector
from rl_runner.runstate import next_multiple
from rl_runner.threads import choose_threads, keep_freed_memory, usable_cores

log = logging.getLogger("rl_runner")

# env steps between logged losses and SPS (at least every update's steps). Off-policy updates come
# every env step: ~8 TensorBoard events per step took a sizeable share of a SAC step (the writer
# thread competes for the GIL); CleanRL's SAC logs every 100 steps too. a2c's 40-step updates
# (8 envs x 5 steps) logged each time cost it about a third of its CartPole steps/s; 256 leaves
# every other on-policy preset logging each update (the smallest rollout, ppo cartpole's, is 256)
LOG_EVERY = {"on_policy": 256, "off_policy": 100, "offline": 100}
PROGRESS_LINE_SECONDS = 30.0  # parallel sweep jobs: a progress line this often


def overlaps_rollouts(cls: type) -> bool:
    """Whether env.envpool_async can collect this algorithm's next rollout during its update:
    on-policy algorithms that correct for the acting policy's lag (contracts.OnPolicy) and learn
    from their own rollouts only."""
    return getattr(cls, "overlaps_rollouts", False) is True and not cls.uses_demonstrations


def no_overlap(envs: gym.vector.VectorEnv, algo: Algorithm) -> str | None:
    """Why env.envpool_async=auto does not overlap this run's rollouts, or None where it does."""
    if not isinstance(envs, EnvPoolVectorEnv):
        return "the envs are not EnvPool's"
    if not overlaps_rollouts(type(algo)):
        return f"{algo_name(type(algo))} does not overlap its rollouts"
    if not OverlappedCollector.allows(algo):
        return "algo.normalize_obs=true updates its statistics while acting"
    return None


def make_feeder(cfg: DictConfig, envs: gym.vector.VectorEnv, algo: Algorithm) -> Feeder:
    """The feeder of the algorithm's family; imitation algorithms get the demonstrations first."""
    overlap = cfg.env.get("envpool_async", False)  # absent in configs saved before it
    if overlap == "auto":
        why_not = no_overlap(envs, algo)
        overlap = why_not is None
        if overlap:
            log.info("env.envpool_async=auto: the next rollout steps while the update runs, "
                     "acted by the policy from before it (one update of policy lag); "
                     "env.envpool_async=false for none")
        else:
            log.info("env.envpool_async=auto: no overlap, %s", why_not)
    if overlap and not overlaps_rollouts(type(algo)):
        if algo.uses_demonstrations:
            why = "learns from demonstrations"
        elif algo.family == "on_policy":
            why = "does not correct its loss for that lag"
        else:
            why = "is " + algo.family.replace("_", "-")
        able = config_checks.algos_where(overlaps_rollouts)
        raise UserError(f"env.envpool_async=true overlaps an on-policy rollout with the update, "
                        f"acted by the policy from before it, and {algo_name(type(algo))} {why}; "
                        f"algorithms allowed with it: "
                        f"{', '.join(able)}")
    if algo.family == "offline":
        return offline_feeder(cfg, envs, algo)
    if algo.family == "off_policy":
        feeder: Feeder = ReplayFeeder(envs, algo, cfg.seed)
    elif overlap:
        OverlappedCollector.check(algo)
        feeder = OverlappedCollector(envs, algo.n_steps, cfg.seed)
    else:
        feeder = RolloutCollector(envs, algo.n_steps, cfg.seed)
    if algo.uses_demonstrations:
        data, feeder.dataset = expert_data(cfg, envs)
        algo.fit_dataset(data)
    return feeder


class Trainer:
    """Owns envs, the feeder, counters, logging, evaluation, checkpoints and signals."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resume: bool = False,
                 max_threads: int | None = None, progress_lines: bool = False):
        self.cfg, self.run_dir, self.tcfg = cfg, Path(run_dir), cfg.trainer
        self.max_threads = max_threads or usable_cores()
        # parallel sweep jobs: periodic log lines instead of bars that overwrite each other
        self.progress_lines = progress_lines and self.tcfg.progress
        self.ckpt_dir = self.run_dir / "checkpoints"
        config_checks.check_trainer(cfg)
        check_loggers(cfg.get("logger"))
        keep_freed_memory()
        choose_threads(self.tcfg.torch_threads, self.max_threads)
        checkpoint = load_checkpoint(self.ckpt_dir / "last.pt") if resume else None
        if not resume and ((self.ckpt_dir / "last.pt").exists()
                           or (self.run_dir / "results.json").exists()):
            raise UserError(f"{self.run_dir} already holds a run; resume it with "
                            f"resume={self.run_dir} or choose another hydra.run.dir")
        seed_everything(cfg.seed)
        env_opts = env_options(cfg.env)  # env.kwargs, env.atari
        self.envs = make_vec_env(cfg.env.id, cfg.env.n_envs,
                                 vectorization=cfg.env.get("vectorization", "sync"),
                                 training=True, threads=self.max_threads,
                                 envpool_async=cfg.env.get("envpool_async", False), **env_opts)
        self.envs.action_space.seed(cfg.seed)
        self.algo = build_algo(cfg, self.envs.single_observation_space,
                               self.envs.single_action_space, str(self.tcfg.device))
        self.algo_name = algo_name(type(self.algo))
        self.threads, self.tuner = choose_threads(self.tcfg.torch_threads, self.max_threads,
                                                  self.algo)
        self.feeder = make_feeder(cfg, self.envs, self.algo)
        runstate.check_dataset(self, checkpoint)
        self._set_budget()
        self.evaluator = Evaluator(cfg.env.id, self.tcfg.eval_episodes, cfg.seed + 10_000,
                                   **env_opts)
        self.env_steps = 0
        self.wall_before = 0.0  # wall seconds spent in earlier sessions of a resumed run
        self.next_eval, self.next_checkpoint = self.eval_every, self.checkpoint_every
        self.next_log = self.log_every
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step = -1
        self.best_eval = -math.inf
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.stop_signal: int | None = None
        self.saved_step: int | None = None  # the env step last.pt holds, if there is one
        if checkpoint is not None:
            runstate.restore(self, checkpoint)
        # a resume continues the curves after the checkpoint's own step, and the same runs
        self.logger = build_loggers(cfg.get("logger"), self.run_dir,
                                    self.env_steps if resume else None,
                                    (checkpoint or {}).get("logger"))
        runlog.accept()  # a resume is accepted: its train.log gets the lines held back
        if not resume:
            flat = config_checks.flatten(OmegaConf.to_container(cfg, resolve=True))
            self.logger.hparams(flat, ["eval/return_mean", "charts/episodic_return"])

    def _set_budget(self) -> None:
        """Whole feeder steps only, so that the budget is never exceeded (at least one);
        offline: one gradient step per update, whatever env.n_envs says."""
        family = self.algo.family
        self.step_size = step_size = 1 if family == "offline" else \
            self.algo.n_steps * self.cfg.env.n_envs
        self.log_every = max(step_size, LOG_EVERY.get(family, 1))
        total = self.tcfg.total_steps
        if total < step_size:
            raise UserError(f"trainer.total_steps={total} is less than one update "
                            f"({step_size} env steps: algo.n_steps x env.n_envs; off-policy: "
                            "algo.train_freq x env.n_envs); raise it or make the update smaller")
        self.budget = total // step_size * step_size
        if self.budget != total:
            log.info("trainer.total_steps=%d is not a multiple of the env steps per update %d "
                     "(algo.n_steps x env.n_envs; off-policy: algo.train_freq x env.n_envs): "
                     "training stops at %d env steps", total, step_size, self.budget)
        self.eval_every = self.tcfg.eval_every or max(1, self.budget // 10)
        self.checkpoint_every = self.tcfg.checkpoint_every or self.eval_every

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        total = self.budget
        unit = self.algo.step_unit
        log.info("%s on %s: %d envs (%s%s), %d %s, seed %d, %d torch threads, device %s, "
                 "run dir %s", self.algo_name, self.cfg.env.id, self.cfg.env.n_envs,
                 self.envs.backend,
                 ", stepped during updates" if isinstance(self.feeder, OverlappedCollector)
                 else "", total, unit, self.cfg.seed, self.threads, self.algo.device,
                 self.run_dir)
        start, start_steps = time.perf_counter(), self.env_steps
        bar = tqdm.tqdm(total=total, initial=self.env_steps, unit="step", dynamic_ncols=True,
                        disable=not self.tcfg.progress or self.progress_lines,
                        mininterval=0.5, smoothing=0.1)
        next_line = start + PROGRESS_LINE_SECONDS
        previous = self._install_signals()
        status, error = "completed", None
        # a resumed run's old "completed" record must not stand while it trains on
        write_results(self, "running", 0.0, start_steps, None)
        # NaN/Inf is caught by the loss and checkpoint checks, with one line: numpy's
        # RuntimeWarnings on the way there would only add lines of noise
        floating = np.seterr(all="ignore")
        try:
            self._evaluate_when_due()  # a resume of a run stopped in one: it first, at its step
            while self.env_steps < total and self.stop_signal is None:
                before = self.env_steps
                metrics = self._learn_once()
                elapsed = time.perf_counter() - start
                sps = (self.env_steps - start_steps) / max(elapsed, 1e-9)
                if self.env_steps >= self.next_log or self.env_steps >= total:
                    if self.feeder.validation is not None:  # offline: the held-out rows
                        metrics.update(self.algo.validate(self.feeder.validation))
                    self.logger.metrics(metrics, self.env_steps)
                    self.logger.scalar("charts/SPS", sps, self.env_steps)
                    self.next_log = next_multiple(self.env_steps, self.log_every)
                self._evaluate_when_due()
                if self.env_steps >= self.next_checkpoint:
                    runstate.save(self, "last.pt", self.wall_before + elapsed)
                    self.next_checkpoint = next_multiple(self.env_steps, self.checkpoint_every)
                bar.update(self.env_steps - before)
                bar.set_postfix(sps=f"{sps:.0f}", ret=self._recent(), refresh=False)
                if self.progress_lines and start + elapsed >= next_line:
                    log.info("step %d/%d (%.0f%%), %.0f steps/s, recent return %s",
                             self.env_steps, total, 100 * self.env_steps / total, sps,
                             self._recent())
                    next_line = start + elapsed + PROGRESS_LINE_SECONDS
            elapsed = time.perf_counter() - start
            # done: the budget trained and evaluated there (a signal after that changes nothing);
            # else a signal came first, or during the final evaluation
            done = self.env_steps >= total and (self.last_eval_step == self.env_steps or (
                self.stop_signal is None and self._evaluate()))
            if not done:
                status = "interrupted"
            runstate.save(self, "last.pt", self.wall_before + elapsed)
        except KeyboardInterrupt:  # a second Ctrl-C: quit without saving; last.pt stays as it was
            status = "interrupted"
            raise
        except Exception as e:
            status, error = "failed", describe(e)
            raise
        finally:
            np.seterr(**floating)
            bar.close()
            self._restore_signals(previous)
            elapsed = time.perf_counter() - start
            results = self._close(status, elapsed, start_steps, error)
        if status == "interrupted":
            log.info("stopped at step %d; last.pt saved. Resume with:\n  rl-run %s",
                     self.env_steps, shlex.quote(f"resume={resume_value(self.run_dir)}"))
        else:
            log.info("done: %d %s in %.1f s (%.0f steps/s); eval return %.2f +- %.2f",
                     self.env_steps, unit, results["wall_seconds"], results["sps"],
                     results["eval_return_mean"], results["eval_return_std"])
        summary = self.algo.summary()  # the algorithm's own record of the run, if it keeps one
        if summary:
            log.info("%s", summary)
        return results

    def _close(self, status: str, elapsed: float, start_steps: int, error: str | None) -> dict:
        """Write results.json (the failure too, if it fits) and close the outputs. A write that
        fails here (a full disk) is the error to report only when nothing failed before it."""
        results: dict = {}
        try:
            results = write_results(self, status, elapsed, start_steps, error)
            self.logger.close()
        except UserError:
            if error is None:
                raise
        finally:
            self.feeder.close()  # background work first: it may be stepping the envs
            self.envs.close()
            self.evaluator.close()
        return results

    def _learn_once(self) -> dict[str, float]:
        """One feeder step and one update; returns the update's metrics ({} while warming up)."""
        batch, episodes = self.feeder.collect(self.algo)
        base = self.env_steps
        for offset, ret, length in episodes:
            self.logger.scalar("charts/episodic_return", ret, base + offset)
            self.logger.scalar("charts/episodic_length", length, base + offset)
            self.recent_returns.append(ret)
        self.env_steps += self.step_size
        if batch is None:  # off-policy warm-up: acting and storing only
            return {}
        metrics = self.tuner.run(self.algo.update, batch) if self.tuner else \
            self.algo.update(batch)
        check_metrics(self.algo_name, metrics)
        bad = [k for k, v in metrics.items() if "loss" in k and not math.isfinite(v)]
        if bad:
            raise UserError(f"{', '.join(bad)} became NaN/Inf at env step {self.env_steps}; "
                            f"stopped, {runstate.kept(self)}")
        return metrics

    def _evaluate_when_due(self) -> None:
        """The evaluation every eval_every steps; one that a signal stopped stays due."""
        if self.next_eval <= self.env_steps != self.last_eval_step and self._evaluate():
            self.next_eval = next_multiple(self.env_steps, self.eval_every)

    def _evaluate(self) -> bool:
        """Evaluate, log, keep best.pt; False where a signal stopped it (nothing recorded, and
        the evaluation stays due: a resume runs it)."""
        deterministic = self.tcfg.get("eval_deterministic", True)  # absent in older configs
        # sampled actions draw from the algorithm's generators: a stopped evaluation puts them
        # back, so that a resume runs it again from the same draws (exact resume)
        rngs = (rng_state(), self.algo.state_dict())
        result = self.evaluator.run(lambda obs: self.algo.act(obs, deterministic=deterministic),
                                    stop=lambda: self.stop_signal is not None)
        step = self.env_steps
        if result is None:
            set_rng_state(rngs[0])
            self.algo.load_state_dict(rngs[1])
            log.info("the evaluation at step %d was stopped before its episodes ended; a "
                     "resume runs it", step)
            return False
        for key in ("return_mean", "return_std", "length_mean"):
            self.logger.scalar(f"eval/{key}", result[key], step)
        self.last_eval, self.last_eval_step = result, step
        # a non-finite return (a policy gone NaN, an env paying inf) is never an improvement
        improved = math.isfinite(result["return_mean"]) and result["return_mean"] > self.best_eval
        if improved:
            self.best_eval = result["return_mean"]
            runstate.save(self, "best.pt", self.wall_before)
        log.info("step %d: eval return %.2f +- %.2f over %d episodes%s", step,
                 result["return_mean"], result["return_std"], result["episodes"],
                 " (best)" if improved else "")
        return True

    def _recent(self) -> str:
        return f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"

    # ---- signals ------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        def handler(signum, _frame):
            if self.stop_signal is not None:  # second Ctrl-C: quit now
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.info("%s received: finishing this update (or stopping the evaluation), then "
                     "saving last.pt (press Ctrl-C again to quit at once)",
                     signal.Signals(signum).name)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread (e.g. a launcher's worker)
                pass
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

def train(cfg: DictConfig, run_dir: Path | str, resume: bool = False,
          max_threads: int | None = None, progress_lines: bool = False) -> dict:
    """Build a Trainer for `cfg` in `run_dir` and run it; returns the results dict.

    max_threads: this job's share of the cores (parallel sweeps); progress_lines: log lines
    every PROGRESS_LINE_SECONDS instead of a progress bar."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, Path(run_dir), resume=resume, max_threads=max_threads,
                   progress_lines=progress_lines).run()
