"""The one training loop: every algorithm family runs through `Trainer.run`."""
from __future__ import annotations

import ctypes
import logging
import math
import os
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
from rl_runner import runlog
from rl_runner.algos.base import OnPolicyAlgorithm
from rl_runner.algos.build import build_algo
from rl_runner.checkpoint import (load_checkpoint, misfit, nonfinite_paths, rng_state,
                                  save_checkpoint, seed_everything, set_rng_state)
from rl_runner.envs import make_vec_env
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.errors import UserError, describe
from rl_runner.evaluation import Evaluator
from rl_runner.fileio import write_json
from rl_runner.logger import TBLogger
from rl_runner.demonstrations import expert_data
from rl_runner.offline import offline_feeder
from rl_runner.results import versions
from rl_runner.replay import ReplayFeeder
from rl_runner.resume import resume_value
from rl_runner.rollout import RolloutCollector
from rl_runner.threads import ThreadTuner, set_threads

log = logging.getLogger("rl_runner")


def _rollout_collector(envs: gym.vector.VectorEnv, algo: OnPolicyAlgorithm,
                       seed: int) -> RolloutCollector:
    return RolloutCollector(envs, algo.n_steps, seed)


# family -> feeder(envs, algo, seed); `collect(algo)` takes algo.n_steps x n_envs env steps and
# returns (batch for `update`, or None when there is nothing to learn from yet; episodes)
# (the offline family's feeder samples a dataset instead: rl_runner.offline)
FEEDERS = {"on_policy": _rollout_collector, "off_policy": ReplayFeeder}
FAMILIES = (*FEEDERS, "offline")
# env steps between logged losses and SPS (at least every update's steps). Off-policy updates come
# every env step: ~8 TensorBoard events per step took ~2 ms of a 12 ms SAC step (the writer
# thread competes for the GIL); CleanRL's SAC logs every 100 steps too.
LOG_EVERY = {"on_policy": 1, "off_policy": 100, "offline": 100}
PROGRESS_LINE_SECONDS = 30.0  # parallel sweep jobs: a progress line this often


def usable_cores() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def keep_freed_memory() -> None:
    """Keep freed blocks in the heap instead of handing them back to the OS (glibc only).

    An update allocates and frees ~15 MB of activations. glibc hands large blocks and the heap top
    back to the OS, so the next update page-faults them in again: 40-600 minor faults per SAC
    update (256x256 layers) with glibc's adaptive defaults, 3600 with its static 128 KB ones;
    measured up to 25% (40%) of the update on this 2-core VM, ~0 faults with these settings.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: only blocks over 32 MB get their own mapping
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of free heap top


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
        keep_freed_memory()
        self._set_threads()
        checkpoint = load_checkpoint(self.ckpt_dir / "last.pt") if resume else None
        if not resume and ((self.ckpt_dir / "last.pt").exists()
                           or (self.run_dir / "results.json").exists()):
            raise UserError(f"{self.run_dir} already holds a run; resume it with "
                            f"resume={self.run_dir} or choose another hydra.run.dir")
        seed_everything(cfg.seed)
        env_kwargs = config_checks.to_plain(cfg.env.get("kwargs")) or {}
        self.envs = make_vec_env(cfg.env.id, cfg.env.n_envs, env_kwargs,
                                 cfg.env.get("vectorization", "sync"))
        self.envs.action_space.seed(cfg.seed)
        self.algo = build_algo(cfg, self.envs.single_observation_space,
                               self.envs.single_action_space)
        self.algo_name = self.algo.name or type(self.algo).__name__.lower()
        self.threads = self._set_threads(self.algo)
        self.family = self.algo.family
        if self.family not in FAMILIES:
            raise UserError(f"algorithm family {self.family!r} is not supported by this trainer; "
                            f"supported: {', '.join(FAMILIES)}")
        self.dataset: dict | None = None  # the rows learnt from (path, sha256), if any
        if self.family == "offline":
            self.feeder = offline_feeder(cfg, self.envs, self.algo)
            self.dataset = self.feeder.dataset
        else:
            self.feeder = FEEDERS[self.family](self.envs, self.algo, cfg.seed)
            if hasattr(self.algo, "fit_dataset"):  # imitation beside the env (gail)
                data, self.dataset = expert_data(cfg, self.envs)
                self.algo.fit_dataset(data)
        self._check_dataset(checkpoint)
        # whole feeder steps only, so that the budget is never exceeded (at least one)
        # offline: one gradient step per update, whatever env.n_envs says
        self.step_size = step_size = (1 if self.family == "offline"
                                      else self.algo.n_steps * cfg.env.n_envs)
        self.log_every = max(step_size, LOG_EVERY.get(self.family, 1))
        if self.tcfg.total_steps < step_size:
            raise UserError(f"trainer.total_steps={self.tcfg.total_steps} is less than one update "
                            f"({step_size} env steps: algo.n_steps x env.n_envs; off-policy: "
                            "algo.train_freq x env.n_envs); raise it or make the update smaller")
        self.budget = self.tcfg.total_steps // step_size * step_size
        if self.budget != self.tcfg.total_steps:
            log.info("trainer.total_steps=%d is not a multiple of the env steps per update %d "
                     "(algo.n_steps x env.n_envs; off-policy: algo.train_freq x env.n_envs): "
                     "training stops at %d env steps",
                     self.tcfg.total_steps, step_size, self.budget)
        self.evaluator = Evaluator(cfg.env.id, self.tcfg.eval_episodes, cfg.seed + 10_000,
                                   env_kwargs)
        self.eval_every = self.tcfg.eval_every or max(1, self.budget // 10)
        self.checkpoint_every = self.tcfg.checkpoint_every or self.eval_every
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
            self._restore(checkpoint)
        # events at the checkpoint's own step were logged before it was saved: purge after them
        self.logger = TBLogger(self.run_dir / "tb",
                               purge_step=self.env_steps + 1 if resume else None,
                               flush_secs=cfg.logger.get("flush_secs", 20))
        runlog.accept()  # a resume is accepted: its train.log gets the lines held back
        if not resume:
            flat = config_checks.flatten(OmegaConf.to_container(cfg, resolve=True))
            self.logger.hparams(flat, ["eval/return_mean", "charts/episodic_return"])

    # ---- construction -------------------------------------------------------------------------
    def _set_threads(self, algo=None) -> int:
        """trainer.torch_threads, or with `auto` the algorithm's choice for its matmul sizes.

        Called before the networks are built (`auto`: one thread, so that initial weights do not
        depend on the machine's cores: orthogonal init's QR differs in its last bits with the
        thread count) and again after, with the algorithm."""
        threads = self.tcfg.torch_threads
        if threads == "auto":
            threads = 1 if algo is None else algo.preferred_threads(self.max_threads)
        elif algo is not None and threads > self.max_threads < usable_cores():
            log.warning("trainer.torch_threads=%d: more than this job's share of the cores (%d) "
                        "while other jobs of the sweep run; auto picks within it",
                        threads, self.max_threads)
        # numpy's OpenBLAS (the on-policy kernels, GAE) gets the same count: its default of one
        # thread per core made a 256x64 matmul 2x slower while another process held a core
        set_threads(threads)
        # auto with several threads: re-measured now and then, since another process taking a
        # core makes several threads far slower than one (rl_runner/threads.py)
        self.tuner = ThreadTuner(threads) if (algo is not None and threads > 1 and
                                              self.tcfg.torch_threads == "auto") else None
        return threads

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        total = self.budget
        unit = "gradient steps" if self.family == "offline" else "env steps"
        log.info("%s on %s: %d envs, %d %s, seed %d, %d torch threads, run dir %s",
                 self.algo_name, self.cfg.env.id, self.cfg.env.n_envs,
                 total, unit, self.cfg.seed, self.threads, self.run_dir)
        start, start_steps = time.perf_counter(), self.env_steps
        bar = tqdm.tqdm(total=total, initial=self.env_steps, unit="step", dynamic_ncols=True,
                        disable=not self.tcfg.progress or self.progress_lines,
                        mininterval=0.5, smoothing=0.1)
        next_line = start + PROGRESS_LINE_SECONDS
        previous = self._install_signals()
        status, error = "completed", None
        # a resumed run's old "completed" record must not stand while it trains on
        self._write_results("running", 0.0, start_steps, None)
        # NaN/Inf is caught by the loss and checkpoint checks, with one line: numpy's
        # RuntimeWarnings on the way there would only add lines of noise
        floating = np.seterr(all="ignore")
        try:
            while self.env_steps < total and self.stop_signal is None:
                before = self.env_steps
                metrics = self._learn_once()
                elapsed = time.perf_counter() - start
                sps = (self.env_steps - start_steps) / max(elapsed, 1e-9)
                if self.env_steps >= self.next_log or self.env_steps >= total:
                    validation = getattr(self.feeder, "validation", None)
                    if validation is not None:  # offline: the held-out split's loss
                        metrics.update(self.algo.validate(validation))
                    self.logger.metrics(metrics, self.env_steps)
                    self.logger.scalar("charts/SPS", sps, self.env_steps)
                    self.next_log = _next_multiple(self.env_steps, self.log_every)
                if self.env_steps >= self.next_eval:
                    self._evaluate()
                    self.next_eval = _next_multiple(self.env_steps, self.eval_every)
                if self.env_steps >= self.next_checkpoint:
                    self._save("last.pt", elapsed)
                    self.next_checkpoint = _next_multiple(self.env_steps, self.checkpoint_every)
                bar.update(self.env_steps - before)
                bar.set_postfix(sps=f"{sps:.0f}", ret=self._recent(), refresh=False)
                if self.progress_lines and start + elapsed >= next_line:
                    log.info("step %d/%d (%.0f%%), %.0f steps/s, recent return %s",
                             self.env_steps, total, 100 * self.env_steps / total, sps,
                             self._recent())
                    next_line = start + elapsed + PROGRESS_LINE_SECONDS
            elapsed = time.perf_counter() - start
            if self.stop_signal is not None:
                status = "interrupted"
            elif self.last_eval_step != self.env_steps:
                self._evaluate()
            self._save("last.pt", elapsed)
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
        if hasattr(self.algo, "summary"):  # an algorithm's own record of the run, if it keeps one
            log.info("%s", self.algo.summary())
        return results

    def _close(self, status: str, elapsed: float, start_steps: int, error: str | None) -> dict:
        """Write results.json (the failure too, if it fits) and close the outputs. A write that
        fails here (a full disk) is the error to report only when nothing failed before it."""
        results: dict = {}
        try:
            results = self._write_results(status, elapsed, start_steps, error)
            self.logger.close()
        except UserError:
            if error is None:
                raise
        finally:
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
        bad = [k for k, v in metrics.items() if "loss" in k and not math.isfinite(v)]
        if bad:
            raise UserError(f"{', '.join(bad)} became NaN/Inf at env step {self.env_steps}; "
                            f"stopped, {self._kept()}")
        return metrics

    def _kept(self) -> str:
        """What is left on disk after a non-finite stop."""
        if self.saved_step is None:
            return "no checkpoint had been saved yet"
        return f"checkpoints/last.pt keeps the last good state (env step {self.saved_step})"

    def _evaluate(self) -> None:
        result = self.evaluator.run(lambda obs: self.algo.act(obs, deterministic=True))
        step = self.env_steps
        for key in ("return_mean", "return_std", "length_mean"):
            self.logger.scalar(f"eval/{key}", result[key], step)
        self.last_eval, self.last_eval_step = result, step
        # a non-finite return (a policy gone NaN, an env paying inf) is never an improvement
        improved = math.isfinite(result["return_mean"]) and result["return_mean"] > self.best_eval
        if improved:
            self.best_eval = result["return_mean"]
            self._save("best.pt", None)
        log.info("step %d: eval return %.2f +- %.2f over %d episodes%s", step,
                 result["return_mean"], result["return_std"], result["episodes"],
                 " (best)" if improved else "")

    def _recent(self) -> str:
        return f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, name: str, elapsed: float | None) -> None:
        wall = self.wall_before + (elapsed if elapsed is not None else 0.0)
        state = {
            "algo": self.algo.state_dict(),
            "counters": self._counters(wall),
            "rng": rng_state(),
            "env": {"state": env_state(self.envs), "action_space_rng":
                    self.envs.action_space.np_random.bit_generator.state},
            "feeder": self.feeder.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "dataset": self.dataset,
        }
        bad = nonfinite_paths(state["algo"])
        if bad:  # never write a checkpoint that holds NaN/Inf
            raise UserError(f"the algorithm's state became NaN/Inf ({', '.join(bad[:3])}) by env "
                            f"step {self.env_steps}; stopped before saving {name}, {self._kept()}")
        buffer = getattr(self.feeder, "buffer", None)
        # the buffer serves resuming only: best.pt (a policy to evaluate) goes without it
        if buffer is not None and name == "last.pt" and self.tcfg.save_replay_buffer:
            state["replay_buffer"] = buffer.state_dict()
        save_checkpoint(self.ckpt_dir / name, state)
        if name == "last.pt":
            self.saved_step = self.env_steps

    def _check_dataset(self, ckpt: dict | None) -> None:
        """On resume, the rows must be those last.pt was trained on; then say which they are."""
        trained_on = (ckpt or {}).get("dataset")
        if self.dataset and trained_on and trained_on.get("sha256") != self.dataset["sha256"]:
            raise UserError(f"resume: the dataset {self.dataset['path']} is not the one "
                            f"{self.ckpt_dir / 'last.pt'} was trained on (its rows changed: sha256 "
                            f"{self.dataset['sha256'][:12]}, trained on "
                            f"{str(trained_on.get('sha256'))[:12]}); put the original back or "
                            "start a new run")
        if self.dataset:
            log.info("dataset %s: %s", self.dataset["path"], self.dataset["rows"])

    def _counters(self, wall: float) -> dict:
        return {"env_steps": self.env_steps, "grad_steps": self.algo.grad_steps,
                "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint,
                "best_eval": self.best_eval, "last_eval": self.last_eval,
                "last_eval_step": self.last_eval_step, "wall_seconds": wall,
                "recent_returns": list(self.recent_returns)}

    def _check_fits(self, ckpt: dict) -> None:
        """The checkpoint's parts have the structure of this run's own (keys, types, shapes),
        and its counters are in range, before any of it is loaded: one line where not."""
        last = self.ckpt_dir / "last.pt"
        parts = {"algo": self.algo.state_dict(), "feeder": self.feeder.state_dict(),
                 "counters": self._counters(0.0), "rng": rng_state(),
                 "env": {"state": None, "action_space_rng":
                         self.envs.action_space.np_random.bit_generator.state}}
        for key, reference in parts.items():
            where = misfit(reference, ckpt.get(key, {} if key != "env" else None), f"{key}.")
            if where is not None or key not in ckpt:
                raise UserError(f"{last} does not fit this run: {where or key + ' is missing'}")
        bad = counters_misfit(ckpt["counters"]) or \
            next((f"algo.{p} is NaN/Inf" for p in nonfinite_paths(ckpt["algo"])), None)
        if bad:
            raise UserError(f"{last} does not fit this run: {bad}")
        saved_envs = ckpt["env"]["state"]
        if saved_envs is not None and not isinstance(saved_envs, (list, bytes)):
            raise UserError(f"{last} does not fit this run: its env state is a "
                            f"{type(saved_envs).__name__}")

    def _restore(self, ckpt: dict) -> None:
        self._check_fits(ckpt)
        try:
            self.algo.load_state_dict(ckpt["algo"])
            c = ckpt["counters"]
            self.env_steps, self.next_eval = c["env_steps"], c["next_eval"]
            self.next_checkpoint, self.best_eval = c["next_checkpoint"], c["best_eval"]
            self.last_eval, self.last_eval_step = c["last_eval"], c["last_eval_step"]
            self.wall_before = c["wall_seconds"]
            self.saved_step = self.env_steps
            self.next_log = _next_multiple(self.env_steps, self.log_every)
            self.recent_returns.extend(c["recent_returns"])
            set_rng_state(ckpt["rng"])
            self.envs.action_space.np_random.bit_generator.state = ckpt["env"]["action_space_rng"]
            self.feeder.load_state_dict(ckpt["feeder"])
            buffer = getattr(self.feeder, "buffer", None)
            if buffer is not None and "replay_buffer" in ckpt:
                buffer.load_state_dict(ckpt["replay_buffer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{self.ckpt_dir / 'last.pt'} does not fit this run's config "
                            f"({type(e).__name__}: {e})") from None
        saved_envs = ckpt["env"]["state"]  # format 1 held pickled bytes: never unpickled
        if self.family == "offline":  # no env is stepped while learning: nothing to restore
            pass
        elif isinstance(saved_envs, list):
            try:
                restore_env_state(self.envs, saved_envs)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise UserError(f"{self.ckpt_dir / 'last.pt'}: its env state does not fit this "
                                f"run's envs ({e})") from None
        else:
            self.feeder.obs, _ = self.envs.reset(seed=self.cfg.seed + self.env_steps)
            self.feeder.tracker.load_state_dict({"returns": np.zeros(self.envs.num_envs),
                                                 "lengths": np.zeros(self.envs.num_envs,
                                                                     np.int64)})
            why = ("was saved by an earlier rl-runner, whose env state is not loaded (it was a "
                   "pickle)" if isinstance(saved_envs, bytes) else
                   f"holds no env state ({self.cfg.env.id} keeps it in objects that cannot be "
                   "saved as plain data)")
            log.warning("%s %s: the episodes in progress restart on resume, so numbers will "
                        "differ from an uninterrupted run", self.ckpt_dir / "last.pt", why)
        if buffer is not None and "replay_buffer" not in ckpt:
            log.warning("%s holds no replay buffer (trainer.save_replay_buffer=false when it was "
                        "saved): the buffer starts empty and updates wait until it holds "
                        "algo.learning_starts=%d transitions, so numbers will differ from an "
                        "uninterrupted run", self.ckpt_dir / "last.pt",
                        max(1, self.algo.learning_starts))
        log.info("resumed from step %d", self.env_steps)

    # ---- signals ------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        def handler(signum, _frame):
            if self.stop_signal is not None:  # second Ctrl-C: quit now
                raise KeyboardInterrupt
            self.stop_signal = signum
            log.info("%s received: finishing this update, then saving last.pt "
                     "(press Ctrl-C again to quit at once)", signal.Signals(signum).name)
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

    # ---- results ------------------------------------------------------------------------------
    def _write_results(self, status: str, elapsed: float, start_steps: int,
                       error: str | None) -> dict:
        ev = self.last_eval or {}
        wall = self.wall_before + elapsed
        results = {
            "algo": self.algo_name,
            "env": self.cfg.env.name, "env_id": self.cfg.env.id, "seed": self.cfg.seed,
            "env_steps": self.env_steps, "grad_steps": self.algo.grad_steps,
            "wall_seconds": wall, "sps": (self.env_steps - start_steps) / max(elapsed, 1e-9),
            "eval_return_mean": ev.get("return_mean", float("nan")),
            "eval_return_std": ev.get("return_std", float("nan")),
            "eval_episodes": ev.get("episodes", 0),
            "eval_step": self.last_eval_step,
            "best_eval_return_mean": self.best_eval if self.last_eval else float("nan"),
            "status": status, "versions": versions(), "run_dir": str(self.run_dir),
            "total_steps": self.tcfg.total_steps,
            "torch_threads": self.tuner.current if self.tuner else self.threads,
        }
        if error:
            results["error"] = error
        if self.stop_signal is not None:
            results["signal"] = signal.Signals(self.stop_signal).name
        return write_json(self.run_dir / "results.json", results)


def counters_misfit(c: dict) -> str | None:
    """What is wrong with a checkpoint's trainer counters (types fit already: misfit), or None:
    step counts in range, times and returns finite, at most 20 recent returns."""
    for key in ("env_steps", "grad_steps", "next_eval", "next_checkpoint", "last_eval_step"):
        if not -1 <= c[key] < 2**53:
            return f"counters.{key}={c[key]} is out of range"
    if not (isinstance(c["wall_seconds"], float) and 0 <= c["wall_seconds"] < 1e12):
        return f"counters.wall_seconds={c['wall_seconds']!r:.40} is not a time in seconds"
    if not (isinstance(c["best_eval"], float) and c["best_eval"] < math.inf):
        return f"counters.best_eval={c['best_eval']!r:.40} is not a return"
    recent = c["recent_returns"]
    if len(recent) > 20 or not all(isinstance(r, float) and math.isfinite(r) for r in recent):
        return "counters.recent_returns is not a list of up to 20 finite returns"
    ev = c["last_eval"]
    if ev is not None and not (isinstance(ev, dict) and set(ev) >= {"return_mean", "return_std",
                                                                      "length_mean", "episodes"}
                               and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in ev.values())):  # an inf eval is a record too
        return "counters.last_eval is not an evaluation's result"
    return None


def _next_multiple(steps: int, every: int) -> int:
    """The first multiple of `every` after `steps`."""
    return (steps // every + 1) * every


def train(cfg: DictConfig, run_dir: Path | str, resume: bool = False,
          max_threads: int | None = None, progress_lines: bool = False) -> dict:
    """Build a Trainer for `cfg` in `run_dir` and run it; returns the results dict.

    max_threads: this job's share of the cores (parallel sweeps); progress_lines: log lines
    every PROGRESS_LINE_SECONDS instead of a progress bar."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, Path(run_dir), resume=resume, max_threads=max_threads,
                   progress_lines=progress_lines).run()
