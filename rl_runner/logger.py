"""Metrics loggers: the protocol the trainer writes to, the bundled backends chosen with
`logger=[tensorboard,mlflow]`, and a console handler that spares the progress bar.

A backend is picked by the `_target_` of its option in conf/logger/, looked up in BACKENDS: a
logger config may come from a checkpoint someone shared, so it never names code to import."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Protocol

import tqdm
from omegaconf import DictConfig, OmegaConf

from rl_runner.errors import UserError

log = logging.getLogger("rl_runner")

# metric keys an algorithm returns that are not losses
CHART_KEYS = {"learning_rate": "charts/learning_rate"}
TENSORBOARD = "rl_runner.tensorboard_logger.TensorBoardLogger"
# every logger class rl-run may build: `_target_` -> the extra that installs its library
BACKENDS = {TENSORBOARD: None, "rl_runner.mlflow_logger.MLflowLogger": "mlflow"}


class TqdmHandler(logging.StreamHandler):
    """Console log lines printed above the tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class MetricsLogger(Protocol):
    """What the trainer writes to; x-axis = environment steps (offline: gradient steps)."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """An update's metrics, tagged by `metric_tag`."""

    def hparams(self, flat_config: dict[str, object], metric_tags: list[str]) -> None:
        """The run's hyperparameters, once per fresh run."""

    def commit(self, step: int) -> None:
        """checkpoints/last.pt now holds `step`: everything logged so far is kept on resume."""

    def state_dict(self) -> dict[str, str | int]:
        """What a resume needs (saved in the checkpoint): plain strings and ints."""

    def close(self) -> None: ...


def metric_tag(key: str) -> str:
    """An algorithm's metric key as a tag: `losses/<key>` unless it names its namespace."""
    return CHART_KEYS.get(key) or (key if "/" in key else f"losses/{key}")


class FanOutLogger:
    """Forwards every call to several backends, in order (TensorBoard first)."""

    def __init__(self, backends: dict[str, MetricsLogger]):
        self.backends = backends

    def scalar(self, tag: str, value: float, step: int) -> None:
        for backend in self.backends.values():
            backend.scalar(tag, value, step)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        for backend in self.backends.values():
            backend.metrics(metrics, step)

    def hparams(self, flat_config: dict[str, object], metric_tags: list[str]) -> None:
        for backend in self.backends.values():
            backend.hparams(flat_config, metric_tags)

    def commit(self, step: int) -> None:
        for backend in self.backends.values():
            backend.commit(step)

    def state_dict(self) -> dict[str, dict[str, str | int]]:
        return {name: backend.state_dict() for name, backend in self.backends.items()}

    def close(self) -> None:
        """Close every backend, even after one failed; then raise the first failure."""
        first: Exception | None = None
        for backend in self.backends.values():
            try:
                backend.close()
            except Exception as e:
                first = first or e
        if first is not None:
            raise first


def check_loggers(logger_cfg: DictConfig | dict | None) -> dict[str, dict[str, Any]]:
    """{name: options} of a `logger` config, each checked against its bundled class (no import
    of its library). A config from before options had names (`{flush_secs: 20}`) is
    TensorBoard's."""
    cfg = logger_cfg or {}
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if not any(isinstance(v, dict) for v in plain.values()):
        plain = {"tensorboard": {"_target_": TENSORBOARD, **plain}}
    for name, options in plain.items():
        if not isinstance(options, dict) or "_target_" not in options:
            raise UserError(f"logger.{name} is not a logger option (it has no _target_); "
                            "choose loggers with logger=[tensorboard,mlflow]")
        _check_options(f"logger.{name}", options)
    return plain


def _check_options(key: str, options: dict[str, Any]) -> None:
    from rl_runner.config import check_value

    cls = backend_class(key, options["_target_"])
    for option, value in options.items():
        if option == "_target_":
            continue
        if option not in cls.OPTIONS:
            raise UserError(f"{key}.{option} is not a key of this logger; allowed: "
                            f"{', '.join(cls.OPTIONS)}")
        check_value(f"{key}.{option}", value, cls.OPTIONS[option])
    cls.check(key, {k: v for k, v in options.items() if k != "_target_"})


def backend_class(key: str, target: object) -> type:
    """The bundled class named by `target`; anything else is refused, never imported."""
    if target not in BACKENDS:
        raise UserError(f"{key}._target_={target!r} is not a bundled logger; allowed: "
                        f"{', '.join(BACKENDS)}")
    module, _, name = str(target).rpartition(".")
    extra = BACKENDS[target]
    if extra is not None and importlib.util.find_spec(extra) is None:
        raise UserError(f"{key} needs {extra}, which is not installed: "
                        f"pip install 'rl-runner[{extra}]'")
    return getattr(importlib.import_module(module), name)


def build_loggers(logger_cfg: DictConfig | dict | None, run_dir: Path, resume_step: int | None,
                  resume_state: dict | None) -> FanOutLogger:
    """The loggers of `logger_cfg` for `run_dir`. A resume passes the env step of the checkpoint
    it continues from and the `state_dict()` saved in it; a fresh run passes None for both."""
    chosen = check_loggers(logger_cfg)
    if not any(o["_target_"] == TENSORBOARD for o in chosen.values()):
        log.info("logger: TensorBoard is always on (rl-report reads its events); added beside %s",
                 ", ".join(chosen))
        chosen = {"tensorboard": {"_target_": TENSORBOARD}, **chosen}
    # TensorBoard first: its failure is the one a user knows how to fix (the run dir's disk)
    chosen = dict(sorted(chosen.items(), key=lambda kv: kv[1]["_target_"] != TENSORBOARD))
    backends: dict[str, MetricsLogger] = {}
    try:
        for name, options in chosen.items():
            cls = backend_class(f"logger.{name}", options["_target_"])
            kwargs = {k: v for k, v in options.items() if k != "_target_"}
            state = (resume_state or {}).get(name) or {}
            backends[name] = cls.for_run(Path(run_dir), resume_step, state, **kwargs)
    except BaseException:
        for backend in backends.values():  # no writer thread left behind
            with contextlib.suppress(Exception):
                backend.close()
        raise
    return FanOutLogger(backends)
