"""The one training loop: every algorithm family runs through `Trainer.run`."""
from __future__ import annotations

import json
import logging
import math
import platform
import shlex
import signal
import sys
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tqdm
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import rl_runner
from rl_runner import config as config_checks
from rl_runner.checkpoint import (load_checkpoint, rng_state, save_checkpoint, seed_everything,
                                  set_rng_state)
from rl_runner.envs import env_state, make_vec_env, restore_env_state
from rl_runner.errors import UserError
from rl_runner.evaluation import Evaluator
from rl_runner.logger import TBLogger
from rl_runner.rollout import RolloutCollector

log = logging.getLogger("rl_runner")

FEEDERS = {"on_policy": RolloutCollector}


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "gymnasium": gym.__version__, "rl_runner": rl_runner.__version__}


def algo_class(cfg: DictConfig) -> type:
    try:
        return get_class(cfg.algo._target_)
    except Exception as e:
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported ({e})") from None


class Trainer:
    """Owns envs, the feeder, counters, logging, evaluation, checkpoints and signals."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resume: bool = False):
        self.cfg, self.run_dir, self.tcfg = cfg, Path(run_dir), cfg.trainer
        self.ckpt_dir = self.run_dir / "checkpoints"
        config_checks.check_trainer(cfg)
        torch.set_num_threads(self.tcfg.torch_threads)
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
        self.algo = self._build_algo(self.envs.single_observation_space,
                                     self.envs.single_action_space)
        self.family = self.algo.family
        if self.family not in FEEDERS:
            raise UserError(f"algorithm family {self.family!r} is not supported by this trainer; "
                            f"supported: {', '.join(FEEDERS)}")
        self.feeder = FEEDERS[self.family](self.envs, self.algo.n_steps, cfg.seed)
        # whole rollouts only, so that the budget is never exceeded (at least one rollout)
        step_size = self.algo.n_steps * cfg.env.n_envs
        self.budget = max(step_size, self.tcfg.total_steps // step_size * step_size)
        if self.budget != self.tcfg.total_steps:
            log.info("trainer.total_steps=%d is not a multiple of the rollout size %d "
                     "(algo.n_steps x env.n_envs): training stops at %d env steps",
                     self.tcfg.total_steps, step_size, self.budget)
        self.evaluator = Evaluator(cfg.env.id, self.tcfg.eval_episodes, cfg.seed + 10_000,
                                   env_kwargs)
        self.eval_every = self.tcfg.eval_every or max(1, self.budget // 10)
        self.checkpoint_every = self.tcfg.checkpoint_every or self.eval_every
        self.env_steps = 0
        self.wall_before = 0.0  # wall seconds spent in earlier sessions of a resumed run
        self.next_eval, self.next_checkpoint = self.eval_every, self.checkpoint_every
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step = -1
        self.best_eval = -math.inf
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.stop_signal: int | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
        # events at the checkpoint's own step were logged before it was saved: purge after them
        self.logger = TBLogger(self.run_dir / "tb",
                               purge_step=self.env_steps + 1 if resume else None,
                               flush_secs=cfg.logger.get("flush_secs", 20))
        if not resume:
            flat = config_checks.flatten(OmegaConf.to_container(cfg, resolve=True))
            self.logger.hparams(flat, ["eval/return_mean", "charts/episodic_return"])

    # ---- construction -------------------------------------------------------------------------
    def _build_algo(self, obs_space: gym.Space, action_space: gym.Space):
        cfg = self.cfg
        cls = algo_class(cfg)
        name = self.algo_name = getattr(cls, "name", "") or cls.__name__.lower()
        if not cls.supports(action_space):
            able = config_checks.algos_supporting(action_space)
            raise UserError(f"{name} cannot handle the action space {action_space} of "
                            f"{cfg.env.id} (it takes "
                            f"{', '.join(t.__name__ for t in cls.action_spaces)}); algorithms "
                            f"that can: {', '.join(able) if able else 'none yet'}")
        provided = {"observation_space", "action_space", "n_envs", "total_steps", "seed"}
        kwargs = {k: config_checks.to_plain(v) for k, v in cfg.algo.items() if k != "_target_"}
        config_checks.check_algo_kwargs(name, cls, kwargs, provided)
        return instantiate(cfg.algo, observation_space=obs_space, action_space=action_space,
                           n_envs=cfg.env.n_envs, total_steps=self.tcfg.total_steps,
                           seed=cfg.seed, _convert_="all")

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        total = self.budget
        log.info("%s on %s: %d envs, %d env steps, seed %d, run dir %s",
                 self.algo_name, self.cfg.env.id, self.cfg.env.n_envs,
                 total, self.cfg.seed, self.run_dir)
        start, start_steps = time.perf_counter(), self.env_steps
        bar = tqdm.tqdm(total=total, initial=self.env_steps, unit="step", dynamic_ncols=True,
                        disable=not self.tcfg.progress, mininterval=0.5, smoothing=0.1)
        previous = self._install_signals()
        status, error = "completed", None
        try:
            while self.env_steps < total and self.stop_signal is None:
                before = self.env_steps
                self._learn_once()
                elapsed = time.perf_counter() - start
                sps = (self.env_steps - start_steps) / max(elapsed, 1e-9)
                self.logger.scalar("charts/SPS", sps, self.env_steps)
                if self.env_steps >= self.next_eval:
                    self._evaluate()
                    self.next_eval = _next_multiple(self.env_steps, self.eval_every)
                if self.env_steps >= self.next_checkpoint:
                    self._save("last.pt", elapsed)
                    self.next_checkpoint = _next_multiple(self.env_steps, self.checkpoint_every)
                bar.update(self.env_steps - before)
                bar.set_postfix(sps=f"{sps:.0f}", ret=self._recent(), refresh=False)
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
            status, error = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            bar.close()
            self._restore_signals(previous)
            elapsed = time.perf_counter() - start
            results = self._write_results(status, elapsed, start_steps, error)
            self.logger.close()
            self.envs.close()
            self.evaluator.close()
        if status == "interrupted":
            log.info("stopped at step %d; last.pt saved. Resume with:\n  rl-run resume=%s",
                     self.env_steps, shlex.quote(str(self.run_dir)))
        else:
            log.info("done: %d env steps in %.1f s (%.0f steps/s); eval return %.2f +- %.2f",
                     self.env_steps, results["wall_seconds"], results["sps"],
                     results["eval_return_mean"], results["eval_return_std"])
        return results

    def _learn_once(self) -> None:
        batch, episodes = self.feeder.collect(self.algo)
        base = self.env_steps
        for offset, ret, length in episodes:
            self.logger.scalar("charts/episodic_return", ret, base + offset)
            self.logger.scalar("charts/episodic_length", length, base + offset)
            self.recent_returns.append(ret)
        self.env_steps += batch.rewards.size
        metrics = self.algo.update(batch)
        bad = [k for k, v in metrics.items() if "loss" in k and not math.isfinite(v)]
        if bad:
            raise UserError(f"{', '.join(bad)} became NaN/Inf at env step {self.env_steps}; "
                            f"stopped, checkpoints/last.pt keeps the last good state")
        self.logger.metrics(metrics, self.env_steps)

    def _evaluate(self) -> None:
        result = self.evaluator.run(lambda obs: self.algo.act(obs, deterministic=True))
        step = self.env_steps
        for key in ("return_mean", "return_std", "length_mean"):
            self.logger.scalar(f"eval/{key}", result[key], step)
        self.last_eval, self.last_eval_step = result, step
        improved = result["return_mean"] > self.best_eval
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
            "counters": {"env_steps": self.env_steps, "grad_steps": self.algo.grad_steps,
                         "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint,
                         "best_eval": self.best_eval, "last_eval": self.last_eval,
                         "last_eval_step": self.last_eval_step, "wall_seconds": wall,
                         "recent_returns": list(self.recent_returns)},
            "rng": rng_state(),
            "env": {"state": env_state(self.envs), "action_space_rng":
                    self.envs.action_space.np_random.bit_generator.state},
            "feeder": self.feeder.state_dict(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        save_checkpoint(self.ckpt_dir / name, state)

    def _restore(self, ckpt: dict) -> None:
        try:
            self.algo.load_state_dict(ckpt["algo"])
            c = ckpt["counters"]
            self.env_steps, self.next_eval = c["env_steps"], c["next_eval"]
            self.next_checkpoint, self.best_eval = c["next_checkpoint"], c["best_eval"]
            self.last_eval, self.last_eval_step = c["last_eval"], c["last_eval_step"]
            self.wall_before = c["wall_seconds"]
            self.recent_returns.extend(c["recent_returns"])
            set_rng_state(ckpt["rng"])
            self.envs.action_space.np_random.bit_generator.state = ckpt["env"]["action_space_rng"]
            self.feeder.load_state_dict(ckpt["feeder"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{self.ckpt_dir / 'last.pt'} does not fit this run's config "
                            f"({type(e).__name__}: {e})") from None
        if ckpt["env"]["state"] is not None:
            restore_env_state(self.envs, ckpt["env"]["state"])
        else:
            self.feeder.obs, _ = self.envs.reset(seed=self.cfg.seed + self.env_steps)
            self.feeder.tracker.load_state_dict({"returns": np.zeros(self.envs.num_envs),
                                                 "lengths": np.zeros(self.envs.num_envs,
                                                                     np.int64)})
            log.warning("%s cannot save its state mid-episode: the episodes in progress restart "
                        "on resume, so numbers will differ from an uninterrupted run",
                        self.cfg.env.id)
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
        }
        if error:
            results["error"] = error
        tmp = self.run_dir / "results.json.tmp"
        # strict JSON: a value not measured (no evaluation yet) is null, not NaN
        results = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                   for k, v in results.items()}
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(self.run_dir / "results.json")
        return results


def _next_multiple(steps: int, every: int) -> int:
    """The first multiple of `every` after `steps`."""
    return (steps // every + 1) * every


def train(cfg: DictConfig, run_dir: Path | str, resume: bool = False) -> dict:
    """Build a Trainer for `cfg` in `run_dir` and run it; returns the results dict."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, Path(run_dir), resume=resume).run()
