"""One Hydra job: a run, or `repeats` runs with consecutive seeds. In a sweep a failed job is
recorded (results.json, summary) and the sweep goes on, unless trainer.fail_fast=true."""
from __future__ import annotations

import json
import logging
import math
import os
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from rl_runner.errors import UserError
from rl_runner.stats import mean_std

log = logging.getLogger("rl_runner")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_jobs(launcher: DictConfig, cores: int) -> int:
    """How many jobs of a sweep run at once on one machine with this Hydra launcher config.

    joblib: n_jobs (-1: one per core); ray: the cores a job reserves decide, so it counts as
    cores // num_cpus; submitit_local: every job at once, cpus_per_task cores each; slurm and
    the basic launcher: one (a slurm job's usable cores are its own allocation)."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n = launcher.get("n_jobs") or -1
        return max(1, cores + 1 + n if n < 0 else n)
    if target.endswith("RayLauncher"):
        per_job = (launcher.get("ray") or {}).get("remote", {}).get("num_cpus") or 1
        return max(1, cores // math.ceil(per_job))
    if target.endswith("submitit_launcher.LocalLauncher"):
        return max(1, cores // (launcher.get("cpus_per_task") or 1))
    return 1


def thread_cap(cores: int) -> int:
    """Torch threads per job so that the jobs running at once use no more than `cores`."""
    if not in_multirun():
        return cores
    return max(1, cores // parallel_jobs(HydraConfig.get().launcher, cores))


def name_console_lines(job: str) -> None:
    """Parallel jobs share one console: start each of this job's lines with its name."""
    from rl_runner.logger import TqdmHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, TqdmHandler):
            handler.setFormatter(logging.Formatter(f"[{job}] %(message)s"))


def run_job(cfg: DictConfig, run_dir: Path, resume: bool) -> dict:
    """Train one run (or `repeats` of them) in `run_dir`; in a sweep, record a failure and go on."""
    from rl_runner.trainer import train, usable_cores

    cores = usable_cores()
    max_threads = thread_cap(cores)
    options = {"max_threads": max_threads, "progress_lines": max_threads < cores}
    if options["progress_lines"]:
        name_console_lines(run_dir.name)
    repeats = cfg.get("repeats", 1)
    try:
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise UserError(f"repeats={repeats!r} must be a positive number of seeds per job")
        if repeats == 1:
            return train(cfg, run_dir, resume=resume, **options)
        if resume:
            raise UserError(f"{run_dir} holds a repeats={repeats} job; resume= continues one run")
        return _repeat(cfg, run_dir, repeats, options)
    except (Exception, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt) or not in_multirun():
            raise
        results = record_failure(cfg, run_dir, e)
        if cfg.trainer.get("fail_fast", False):
            write_sweep_summary(Path(HydraConfig.get().sweep.dir))
            raise
        log.error("job failed, the sweep goes on (trainer.fail_fast=true stops it): %s",
                  results["error"])
        if "Optuna" in str(HydraConfig.get().sweeper.get("_target_", "")):
            # Optuna's sweeper marks a trial FAIL only when its job raises (a NaN value makes
            # optuna 2.10 raise inside the sweeper); hydra.sweeper.max_failure_rate decides
            raise
        return results


def _repeat(cfg: DictConfig, run_dir: Path, repeats: int, options: dict) -> dict:
    """`repeats` runs with seeds seed, seed+1, ... in run_dir/s<seed>/; results: their mean."""
    from rl_runner.trainer import train, write_json

    runs, records = [], []
    status = "completed"
    for seed in range(cfg.seed, cfg.seed + repeats):
        sub = cfg.copy()
        sub.seed = seed
        runs.append(f"s{seed}")
        try:
            records.append(train(sub, run_dir / runs[-1], **options))
        except BaseException as e:  # the job's record names every run started, and the error
            write_json(run_dir / "results.json",
                       {**_mean_of_runs(cfg, runs, records, status), "error": describe(e)})
            raise
        if records[-1]["status"] != "completed":
            status = records[-1]["status"]
            break
    results = _mean_of_runs(cfg, runs, records, status)
    write_json(run_dir / "results.json", results)
    log.info("%d seeds: eval return %.2f (mean of %s)", len(records), results["eval_return_mean"],
             ", ".join(f"{r['eval_return_mean']:.2f}" for r in records))
    return results


def _mean_of_runs(cfg: DictConfig, runs: list[str], records: list[dict], status: str) -> dict:
    """A repeat job's results.json: the fixed keys over its runs, and where they are."""
    if len(records) < len(runs):
        status = "failed"
    finals = [r["eval_return_mean"] for r in records if r["eval_return_mean"] is not None]
    bests = [r["best_eval_return_mean"] for r in records
             if r["best_eval_return_mean"] is not None]
    wall = sum(r["wall_seconds"] for r in records)
    steps = sum(r["env_steps"] for r in records)
    base = records[0] if records else failed_results(cfg, "no run finished")
    done = status == "completed" and len(finals) == len(runs)
    return {
        **{k: base[k] for k in ("algo", "env", "env_id", "versions", "total_steps")},
        "seed": cfg.seed, "seeds": [int(r[1:]) for r in runs], "runs": runs,
        "env_steps": steps, "grad_steps": sum(r["grad_steps"] for r in records),
        "wall_seconds": wall, "sps": steps / wall if wall else None,
        # over seeds: the mean of the runs' final eval returns and their std (ddof=1, as in
        # summary.md; None for one seed)
        "eval_return_mean": mean_std(finals)[0] if done else None,
        "eval_return_std": mean_std(finals)[1] if done else None,
        "eval_episodes": sum(r["eval_episodes"] for r in records),
        "best_eval_return_mean": mean_std(bests)[0] if done and bests else None,
        "status": status,
    }


def failed_results(cfg: DictConfig, error: str) -> dict:
    """results.json of a job that failed before its trainer could write one."""
    from rl_runner.trainer import versions

    env = cfg.get("env") or {}
    algo = (HydraConfig.get().runtime.choices.get("algo") if HydraConfig.initialized()
            else None) or str((cfg.get("algo") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    return {"algo": algo, "env": env.get("name"), "env_id": env.get("id"),
            "seed": cfg.get("seed"), "env_steps": 0, "grad_steps": 0, "wall_seconds": 0.0,
            "sps": None, "eval_return_mean": None, "eval_return_std": None, "eval_episodes": 0,
            "best_eval_return_mean": None, "status": "failed", "versions": versions(),
            "total_steps": (cfg.get("trainer") or {}).get("total_steps"), "error": error}


def describe(e: BaseException) -> str:
    """results.json's error: bad input as its one line, anything else with its type."""
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"


def record_failure(cfg: DictConfig, run_dir: Path, e: BaseException) -> dict:
    """Keep the trainer's own failed results.json if it wrote one; else write one now."""
    from rl_runner.trainer import write_json

    error = describe(e)
    if not isinstance(e, UserError):  # a bug, not bad input: keep the whole trace in train.log
        log.error("%s", "".join(traceback.format_exception(e)).rstrip())
    path = run_dir / "results.json"
    if path.exists():
        try:
            results = json.loads(path.read_text())
            if results.get("status") == "failed":
                return results
        except (OSError, ValueError):
            pass
    run_dir.mkdir(parents=True, exist_ok=True)
    results = failed_results(cfg, error)
    if path.exists():  # an earlier record (a repeat job's) is kept beside the new one
        path.replace(run_dir / "results.previous.json")
    write_json(path, results)
    return results


def write_sweep_summary(sweep_dir: Path) -> None:
    """summary.csv and summary.md at a sweep's root; a failure here never hides the sweep's."""
    from rl_runner.summary import write_summary

    try:
        csv_path, md_path = write_summary(sweep_dir)
        log.info("sweep summary: %s", md_path)
    except Exception as e:  # noqa: BLE001 - the jobs' own results are already on disk
        log.error("could not write the sweep summary in %s: %s", sweep_dir, e)


def disable_ray_token_file(launcher: DictConfig) -> None:
    """A local Ray cluster started by the launcher needs no auth token; Ray >= 2.5x otherwise
    writes ~/.ray/auth_token and later clients may pick up a stale one."""
    if str(launcher.get("_target_", "")).endswith("RayLauncher"):
        if (launcher.get("ray") or {}).get("init", {}).get("address") is None:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml): set-up before a sweep's launcher starts, and
    summary.csv / summary.md at the sweep's root when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        disable_ray_token_file(config.hydra.launcher)
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):  # sqlite makes the file, not its folder
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_sweep_summary(Path(config.hydra.sweep.dir))
