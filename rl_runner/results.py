"""What a run records about itself in results.json."""
from __future__ import annotations

import json
import platform
import signal
from pathlib import Path

import gymnasium as gym
import torch

import rl_runner
from rl_runner.fileio import write_json


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "gymnasium": gym.__version__, "rl_runner": rl_runner.__version__}


def recorded_status(run_dir: Path) -> str | None:
    """The status in the run's results.json (JSON that rl-run wrote), or None where it has
    none that can be read."""
    try:
        status = json.loads((Path(run_dir) / "results.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def write_results(t, status: str, elapsed: float, start_steps: int, error: str | None) -> dict:
    """results.json of trainer `t` (DESIGN's keys, plus the family and what its steps count, so
    that rl-report labels the axis of any algorithm, a plugin's too); returns what was written."""
    ev = t.last_eval or {}
    results = {
        "algo": t.algo_name, "family": t.algo.family, "step_unit": t.algo.step_unit,
        "env": t.cfg.env.name, "env_id": t.cfg.env.id, "seed": t.cfg.seed,
        "env_steps": t.env_steps, "grad_steps": t.algo.grad_steps,
        "wall_seconds": t.wall_before + elapsed,
        "sps": (t.env_steps - start_steps) / max(elapsed, 1e-9),
        "eval_return_mean": ev.get("return_mean", float("nan")),
        "eval_return_std": ev.get("return_std", float("nan")),
        "eval_episodes": ev.get("episodes", 0),
        "eval_step": t.last_eval_step,
        "best_eval_return_mean": t.best_eval if t.last_eval else float("nan"),
        "status": status, "versions": versions(), "run_dir": str(t.run_dir),
        "total_steps": t.tcfg.total_steps,
        # the count the tuner chose: a run may end inside a probe, on its one-thread updates
        "torch_threads": t.tuner.chosen if t.tuner else t.threads,
        "device": str(t.algo.device),  # trainer.device as resolved (auto: cpu or cuda)
    }
    if error:
        results["error"] = error
    if t.stop_signal is not None:
        results["signal"] = signal.Signals(t.stop_signal).name
    return write_json(t.run_dir / "results.json", results)
