"""What a sweep (rl-run -m) needs around its jobs: how many run at once (threads and progress
lines follow from it), set-up the launchers get wrong, and the summary after every job."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from rl_runner.isolation import SWEEP_PID

log = logging.getLogger("rl_runner")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_optuna(sweeper: DictConfig) -> bool:
    return "Optuna" in str(sweeper.get("_target_", ""))


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


def jobs_at_once(cores: int) -> int:
    """This job and the others of its sweep running beside it (1 outside a sweep): the
    launcher's parallelism, capped by the jobs the sweeper hands it at a time."""
    if not in_multirun():
        return 1
    hydra = HydraConfig.get()
    n = parallel_jobs(hydra.launcher, cores)
    batch = hydra.sweeper.get("n_jobs") if is_optuna(hydra.sweeper) else \
        hydra.sweeper.get("max_batch_size")
    return min(n, batch) if batch else n


def name_console_lines(job: str) -> None:
    """Parallel jobs share one console: start each of this job's lines with its name."""
    from rl_runner.logger import TqdmHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, TqdmHandler):
            handler.setFormatter(logging.Formatter(f"[{job}] %(message)s"))


def write_sweep_summary(sweep_dir: Path) -> None:
    """summary.csv and summary.md at a sweep's root; a failure here never hides the sweep's."""
    from rl_runner.summary import write_summary

    try:
        write_summary(sweep_dir)
    except Exception as e:  # noqa: BLE001 - the jobs' own results are already on disk
        log.error("could not write the sweep summary in %s: %s", sweep_dir, e)


def prepare_ray(launcher: DictConfig) -> None:
    """Settings hydra-ray-launcher gets wrong for Ray 2.60, before it starts.

    Its own local cluster needs no auth token: Ray otherwise turns token authentication on and
    writes ~/.ray/auth_token, which later clients of other clusters may pick up. Joining an
    existing cluster (init.address): the launcher adds object_store_memory, which Ray refuses
    there ("must not be provided"); an explicit null keeps it out."""
    if not str(launcher.get("_target_", "")).endswith("RayLauncher"):
        return
    init = launcher.ray.init
    if init.get("address") is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    elif "object_store_memory" not in init:
        with read_write(init), open_dict(init):
            init.object_store_memory = None


class SweepCallbacks(Callback):
    """Hydra callbacks (conf/train.yaml): set-up before a sweep's launcher starts (its pid for
    the jobs' training processes, rl_runner.isolation); summary.csv
    and summary.md at the sweep's root after every job (so a sweep that stops early still has
    one) and when the sweep ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # for the workers a launcher starts: training stops when this process dies (isolation)
        os.environ[SWEEP_PID] = str(os.getpid())
        prepare_ray(config.hydra.launcher)
        if is_optuna(config.hydra.sweeper):  # Hydra's basic sweeper keeps this; Optuna's does not
            sweep_dir = Path(config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(config, sweep_dir / "multirun.yaml")
        storage = str(config.hydra.sweeper.get("storage") or "")
        if storage.startswith("sqlite:///"):  # sqlite makes the file, not its folder
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        write_sweep_summary(sweep_dir)
        log.info("sweep summary: %s", sweep_dir / "summary.md")
