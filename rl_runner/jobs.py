"""One Hydra job: a run, or `repeats` runs with consecutive seeds. In a sweep each job trains in
a process of its own, and a failed job is recorded (results.json, summary) and the sweep goes on,
also when that process died hard, unless trainer.fail_fast=true; Ctrl-C stops the sweep."""
from __future__ import annotations

import json
import logging
import signal
import traceback
from functools import partial
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rl_runner import rundir
from rl_runner.errors import UserError, describe
from rl_runner.fileio import writing
from rl_runner.isolation import describe_exit, run_isolated
from rl_runner.stats import mean_std
from rl_runner.summary import fmt
from rl_runner.sweeps import (in_multirun, is_optuna, jobs_at_once, name_console_lines,
                              write_sweep_summary)

log = logging.getLogger("rl_runner")


def run_job(cfg: DictConfig, run_dir: Path, resume: bool) -> dict:
    """Train one run (or `repeats` of them) in `run_dir`. A single run trains in this process; a
    sweep's job in a child process (rl_runner.isolation), so that one dying hard fails alone: a
    failed job is recorded (results.json, summary) and the sweep goes on."""
    from rl_runner.trainer import usable_cores

    cores = usable_cores()
    parallel = jobs_at_once(cores)
    options = {"max_threads": max(1, cores // parallel), "progress_lines": parallel > 1}
    if not in_multirun():
        return _train(cfg, run_dir, resume, options)
    if parallel > 1:
        name_console_lines(run_dir.name)
    try:
        code, stops = run_isolated(partial(_train_in_child, cfg, run_dir, resume, options))
    except KeyboardInterrupt:  # before the training process started
        stop_sweep("interrupted", 130)
    results, bad_input = _outcome(cfg, run_dir, code)
    if stops or results["status"] == "interrupted":
        # 130 after Ctrl-C, 143 after SIGTERM (a scheduler's stop), as for a single run
        term = signal.SIGTERM in stops or results.get("signal") == "SIGTERM"
        stop_sweep("interrupted", 128 + (signal.SIGTERM if term else signal.SIGINT))
    if results["status"] != "failed":
        return results
    if cfg.trainer.get("fail_fast", False):
        log.error("job failed, and trainer.fail_fast=true stops the sweep: %s", results["error"])
        stop_sweep("stopped at the first failed job", 2 if bad_input else 1)
    log.error("job failed, the sweep goes on (trainer.fail_fast=true stops it): %s",
              results["error"])
    if is_optuna(HydraConfig.get().sweeper):
        # Optuna's sweeper marks a trial FAIL when its job raises an Exception (a NaN value
        # makes optuna 2.10 raise inside the sweeper); hydra.sweeper.max_failure_rate decides
        raise RuntimeError(results["error"])
    return results


def _train(cfg: DictConfig, run_dir: Path, resume: bool, options: dict) -> dict:
    """Train in this process: one run, or `repeats` of them."""
    from rl_runner.trainer import train

    repeats = cfg.get("repeats", 1)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise UserError(f"repeats={repeats!r} must be a positive number of seeds per job")
    if repeats == 1:
        return train(cfg, run_dir, resume=resume, **options)
    return _repeat(cfg, run_dir, repeats, options)


def _train_in_child(cfg: DictConfig, run_dir: Path, resume: bool, options: dict) -> int:
    """A sweep job's training process: train, and record a failure in results.json. Its exit
    code (EXIT_CODES) tells the job's process how it ended; results.json holds the rest."""
    try:
        _train(cfg, run_dir, resume, options)
    except KeyboardInterrupt:  # a second Ctrl-C: the trainer quit without saving
        return 130
    except Exception as e:
        record_failure(cfg, run_dir, e)
        return 2 if isinstance(e, UserError) else 1
    return 0


# a training process's exit code -> the statuses its results.json may then hold
EXIT_CODES = {0: ("completed", "interrupted"), 1: ("failed",), 2: ("failed",),
              130: ("interrupted",)}


def _outcome(cfg: DictConfig, run_dir: Path, code: int) -> tuple[dict, bool]:
    """(The job's record after its training process ended with `code`, whether it failed on
    bad input). A process that ended without recording how (killed by a signal, os._exit, a
    crash in native code) is recorded as failed now, with the cause."""
    from rl_runner.fileio import write_json

    path = run_dir / "results.json"
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):
        written = None
    if isinstance(written, dict) and written.get("status") in EXIT_CODES.get(code, ()):
        return written, code == 2
    cause = describe_exit(code)
    # numbers a dying trainer wrote stay; their status does not
    base = written if isinstance(written, dict) else failed_results(cfg, cause)
    return write_json(path, {**base, "status": "failed", "error": cause}), False


def stop_sweep(why: str, code: int) -> None:
    """End the whole sweep from inside a job: the summary first, then exit (SystemExit passes
    through Hydra's launchers, which catch Exception only)."""
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    write_sweep_summary(sweep_dir)
    log.error("sweep %s; what ran is in %s", why, sweep_dir / "summary.md")
    raise SystemExit(code)


def _repeat(cfg: DictConfig, run_dir: Path, repeats: int, options: dict) -> dict:
    """`repeats` runs with seeds seed, seed+1, ... in run_dir/s<seed>/; results: their mean.

    Each run keeps its own .hydra/config.yaml (repeats=1), so `rl-run resume=<job>/s<seed>`
    continues it alone."""
    from rl_runner.fileio import write_json
    from rl_runner.trainer import train

    runs, records = [], []
    status = "completed"
    for seed in range(cfg.seed, cfg.seed + repeats):
        sub = cfg.copy()
        sub.seed, sub.repeats = seed, 1
        runs.append(f"s{seed}")
        with writing(run_dir / runs[-1]):
            (run_dir / runs[-1] / ".hydra").mkdir(parents=True, exist_ok=True)
            rundir.lock(run_dir / runs[-1])  # `resume=<job>/s<seed>` of it is refused meanwhile
            OmegaConf.save(sub, run_dir / runs[-1] / ".hydra" / "config.yaml")
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
    log.info("%d seeds: eval return %s (mean of %s)", len(records),
             fmt(results["eval_return_mean"], 2),
             ", ".join(fmt(r["eval_return_mean"], 2) or "none" for r in records))
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
    mean, std = mean_std(finals) if done else (None, None)
    return {
        **{k: base.get(k) for k in ("algo", "family", "step_unit", "env", "env_id", "versions",
                                      "total_steps")},
        "seed": cfg.seed, "seeds": [int(r[1:]) for r in runs], "runs": runs,
        "env_steps": steps, "grad_steps": sum(r["grad_steps"] for r in records),
        "wall_seconds": wall, "sps": steps / wall if wall else None,
        # over seeds: the mean of the runs' final eval returns and their std (ddof=1, as in
        # summary.md; None for one seed)
        "eval_return_mean": mean, "eval_return_std": std,
        "eval_episodes": sum(r["eval_episodes"] for r in records),
        "best_eval_return_mean": mean_std(bests)[0] if done and bests else None,
        "status": status,
    }


def failed_results(cfg: DictConfig, error: str) -> dict:
    """results.json of a job that failed before its trainer could write one."""
    from rl_runner.results import versions

    env = cfg.get("env") or {}
    algo = (HydraConfig.get().runtime.choices.get("algo") if HydraConfig.initialized()
            else None) or str((cfg.get("algo") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    return {"algo": algo, "env": env.get("name"), "env_id": env.get("id"),
            "seed": cfg.get("seed"), "env_steps": 0, "grad_steps": 0, "wall_seconds": 0.0,
            "sps": None, "eval_return_mean": None, "eval_return_std": None, "eval_episodes": 0,
            "best_eval_return_mean": None, "status": "failed", "versions": versions(),
            "total_steps": (cfg.get("trainer") or {}).get("total_steps"), "error": error}


def record_failure(cfg: DictConfig, run_dir: Path, e: Exception) -> dict:
    """The job's failed record: the trainer's own, if it wrote one; else written now, unless
    results.json already holds something else (then it is left as it is, and only returned)."""
    from rl_runner.fileio import write_json

    if not isinstance(e, UserError):  # a bug, not bad input: keep the whole trace in train.log
        log.error("%s", "".join(traceback.format_exception(e)).rstrip())
    path = run_dir / "results.json"
    results = failed_results(cfg, describe(e))
    if path.exists():
        try:
            written = json.loads(path.read_text())
        except (OSError, ValueError):
            return results
        return written if written.get("status") == "failed" else results
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_json(path, results)
