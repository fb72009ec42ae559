"""MLflow backend (pip install 'rl-runner[mlflow]'): params, metrics by env step, artifacts.

MLflow cannot drop steps the way TensorBoard's purge_step does, so metrics wait in memory and
are sent by `commit`, right after checkpoints/last.pt is saved: the store holds exactly what a
resume keeps, and a resumed run continues the same MLflow run without a duplicated step."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from rl_runner import fileio
from rl_runner.errors import UserError, one_line
from rl_runner.logger import metric_tag
from rl_runner.results import recorded_status

log = logging.getLogger("rl_runner")

SQLITE = "sqlite:///"
# results.json status -> MLflow run status
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
# log_batch limits (mlflow.utils.validation): metrics per call, params per call, param length
MAX_METRICS, MAX_PARAMS, MAX_PARAM_LENGTH = 1000, 100, 6000


class MLflowLogger:
    """One MLflow run per rl-run run; `state_dict` names it, so a resume continues it."""

    OPTIONS = {"tracking_uri": str, "experiment": str, "artifact_location": str | None}

    def __init__(self, run_dir: Path, tracking_uri: str = "sqlite:///outputs/mlflow.db",
                 experiment: str = "rl-runner", artifact_location: str | None = None,
                 run_id: str | None = None, resume_step: int | None = None):
        self.run_dir, self.uri, self.failed = Path(run_dir), local_uri(tracking_uri), False
        self.pending: list = []  # Metric entities logged since the last commit
        self._stamps: dict[str, int] = {}  # this step's keys: their last point's timestamp
        self._stamps_step: int | None = None
        with self.store_errors(), one_at_a_time(self.uri):
            from mlflow.tracking import MlflowClient

            # the two lines MLflow prints when it makes a new sqlite store bypass train.log
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
            self.client = MlflowClient(tracking_uri=self.uri)
            if resume_step is not None and run_id is None:
                log.warning("mlflow: the checkpoint resumed from names no MLflow run (saved "
                            "without mlflow, or an earlier rl-runner); this session logs to a "
                            "new MLflow run from step %d", resume_step)
            if run_id is not None and self._active(run_id):
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            else:
                if run_id is not None:
                    log.warning("mlflow: run %s is not in %s (or was deleted); this session logs "
                                "to a new MLflow run", run_id, self.uri)
                experiment_id = self._experiment(experiment, artifact_location)
                tags = {"rl_runner.run_dir": str(self.run_dir.resolve())}
                if resume_step is not None:
                    tags["rl_runner.resumed_at_step"] = str(resume_step)
                run = self.client.create_run(experiment_id, run_name=self.run_dir.name, tags=tags)
                self.run_id = run.info.run_id

    @staticmethod
    def check(key: str, options: dict) -> None:
        """What can be refused before a run directory exists: an empty name, a store MLflow
        would not take, a server that refuses connections, an artifact folder not writable."""
        if not options.get("experiment", "x"):
            raise UserError(f"{key}.experiment must not be empty")
        uri = options.get("tracking_uri", "sqlite:///outputs/mlflow.db")
        scheme = urllib.parse.urlsplit(uri).scheme
        if scheme not in ("sqlite", "http", "https"):
            raise UserError(f"{key}.tracking_uri={uri!r} is not a store rl-run writes to; allowed: "
                            "sqlite:///<file> or http(s)://<server> (MLflow's file store is "
                            "deprecated)")
        if scheme in ("http", "https"):
            reachable(f"{key}.tracking_uri", uri)
        artifacts = options.get("artifact_location")
        if artifacts and urllib.parse.urlsplit(artifacts).scheme in ("", "file"):
            fileio.check_writable(Path(urllib.parse.urlsplit(artifacts).path).expanduser())

    @classmethod
    def for_run(cls, run_dir: Path, resume_step: int | None, state: dict,
                **options) -> MLflowLogger:
        # a resume writes to the store the run started in, as resolved then (a relative sqlite
        # path would otherwise follow the directory rl-run is resumed from)
        if state.get("tracking_uri"):
            options["tracking_uri"] = state["tracking_uri"]
        return cls(run_dir, run_id=state.get("run_id"), resume_step=resume_step, **options)

    @contextlib.contextmanager
    def store_errors(self) -> Iterator[None]:
        """Any failure of the store (a bad URI, an unwritable folder, a server that is down)
        becomes one line naming the store; the logger then stays quiet at close."""
        try:
            with fileio.writing(self.uri):  # an OSError: `cannot write <uri>: <why>`
                yield
        except store_exceptions() as e:
            self.failed = True
            raise UserError(f"mlflow store {self.uri}: {one_line(e, 240)}") from None
        except UserError:
            self.failed = True
            raise

    def _active(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if artifact_location is None and self.uri.startswith(SQLITE):
            artifact_location = str(Path(self.uri[len(SQLITE):]).parent / "mlartifacts")
        if artifact_location is not None and "://" not in artifact_location:
            artifact_location = Path(artifact_location).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # a parallel sweep job made it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def scalar(self, tag: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        key, value, stamp = safe_key(tag), float(value), int(time.time() * 1000)
        # MLflow keeps one row per key, step, value and millisecond: two envs ending episodes of
        # one length at one step would be one point where TensorBoard has two. So each point of
        # a key at one step comes at least a millisecond after the one before (in order, NaNs
        # too); only the current step's keys are remembered.
        if step != self._stamps_step:
            self._stamps, self._stamps_step = {}, step
        stamp = max(stamp, self._stamps.get(key, stamp - 1) + 1)
        self._stamps[key] = stamp
        self.pending.append(Metric(key, value, stamp, step))

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.scalar(metric_tag(key), value, step)

    def hparams(self, flat_config: dict[str, object], metric_tags: list[str]) -> None:
        """The flattened config as run params (sent now: they have no step)."""
        from mlflow.entities import Param

        params = [Param(safe_key(k)[:250], str(v)[:MAX_PARAM_LENGTH])
                  for k, v in flat_config.items()]
        with self.store_errors():
            for i in range(0, len(params), MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS])

    def commit(self, step: int) -> None:
        """Send what was logged at steps up to `step` (the step checkpoints/last.pt holds)."""
        ready = [m for m in self.pending if m.step <= step]
        self.pending = [m for m in self.pending if m.step > step]
        with self.store_errors():
            for i in range(0, len(ready), MAX_METRICS):
                self.client.log_batch(self.run_id, metrics=ready[i:i + MAX_METRICS])

    def state_dict(self) -> dict[str, str | int]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def close(self) -> None:
        """Attach results.json and the config; end the run with results.json's status. What was
        logged after the last commit is dropped: a resume from last.pt logs it again."""
        if self.failed:
            return
        if self.pending:
            log.debug("mlflow: %d values after the last checkpoint not sent", len(self.pending))
        self.pending = []
        results = self.run_dir / "results.json"
        status = RUN_STATUS.get(recorded_status(self.run_dir), "FINISHED")
        with self.store_errors():
            for path in (results, self.run_dir / ".hydra" / "config.yaml"):
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, status=status)


def store_exceptions() -> tuple[type[Exception], ...]:
    """MLflow's errors, and SQLAlchemy's, which its sqlite store lets through (a folder where the
    database file should be, a full disk)."""
    from mlflow.exceptions import MlflowException

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a server store needs no SQLAlchemy here
        return (MlflowException,)
    return MlflowException, SQLAlchemyError


@contextlib.contextmanager
def one_at_a_time(uri: str) -> Iterator[None]:
    """Parallel sweep jobs open a new sqlite store together: each would create its tables
    (`table ... already exists`) and the experiment. A lock file beside it takes them in turn."""
    if not uri.startswith(SQLITE) or uri == SQLITE + ":memory:":
        yield
        return
    fd = os.open(uri[len(SQLITE):] + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def reachable(key: str, uri: str, timeout: float = 5.0) -> None:
    """A tracking server that accepts connections: MLflow's client would retry a refused one
    for minutes, with a warning each time."""
    parts = urllib.parse.urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"{key}={uri}: cannot connect to {parts.hostname}:{port} "
                        f"({e.strerror or e})") from None


def local_uri(uri: str) -> str:
    """A sqlite store's URI with an absolute path, checked: MLflow retries a store it cannot
    open for ~100 s, printing a warning each time, so what can be seen up front is refused at
    once with one line. Other URIs go as they are."""
    if not uri.startswith(SQLITE) or uri == SQLITE + ":memory:":
        return uri
    path = Path(uri[len(SQLITE):]).expanduser().resolve()
    fileio.check_writable(path.parent)  # a folder sqlite cannot make or write: one line
    with fileio.writing(path):
        if path.exists():
            with path.open("rb") as f:  # also raises IsADirectoryError
                head = f.read(16)
            if head and head != b"SQLite format 3\0":
                raise UserError(f"mlflow store {uri}: {path} is not an SQLite database")
            if not os.access(path, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return SQLITE + str(path)


def safe_key(key: str) -> str:
    """`key` with the characters MLflow refuses in a name (it takes / . - _ space) as `_`."""
    return re.sub(r"[^/\w.\- ]", "_", key)
