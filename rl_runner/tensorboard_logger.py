"""TensorBoard backend: event files in <run dir>/tb with the tags DESIGN.md fixes."""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from rl_runner import fileio
from rl_runner.errors import UserError
from rl_runner.logger import metric_tag


class TensorBoardLogger:
    """Scalars against environment steps; `purge_step` drops what a killed run logged after its
    last checkpoint, so a resumed run continues the same curves without duplicated steps.
    A failed write (disk full, read-only folder) stops the run with one line naming the folder."""

    OPTIONS = {"flush_secs": int}

    def __init__(self, log_dir: Path, purge_step: int | None = None, flush_secs: int = 20):
        self.log_dir = Path(log_dir)
        self.failed = False
        _quiet_writer_threads()
        with self.writing():  # the first event is written and flushed here
            fileio.make_folder(self.log_dir)
            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=flush_secs)

    @staticmethod
    def check(key: str, options: dict) -> None:
        if options.get("flush_secs", 1) <= 0:
            raise UserError(f"{key}.flush_secs={options['flush_secs']} must be positive")

    @classmethod
    def for_run(cls, run_dir: Path, resume_step: int | None, state: dict,
                flush_secs: int = 20) -> TensorBoardLogger:
        # events at the checkpoint's own step were logged before it was saved: purge after them
        purge_step = None if resume_step is None else resume_step + 1
        return cls(run_dir / "tb", purge_step=purge_step, flush_secs=flush_secs)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Events are written by a thread; when it dies (e.g. disk full) it keeps the OSError, and
        the next add_*, flush or close raises it. That, or any OSError, becomes one UserError naming
        the folder, and the logger remembers it failed (close then says nothing more)."""
        try:
            with fileio.writing(self.log_dir):
                yield
        except UserError:
            self.failed = True
            raise

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self.writing():
            self.writer.add_scalar(tag, value, step)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """Algorithm metrics: `losses/<name>` unless the key names its own namespace."""
        with self.writing():
            for key, value in metrics.items():
                self.writer.add_scalar(metric_tag(key), value, step)

    def hparams(self, flat_config: dict[str, object], metric_tags: list[str]) -> None:
        """The HPARAMS-tab record, in this run's own event file (add_hparams would start a new
        run directory), plus a markdown table in the TEXT tab. Its experiment declares the keys
        of every bundled algorithm and env (rl_runner/tb_hparams.py): TensorBoard takes one run's,
        and a sweep that mixes algorithms shows all their columns."""
        from rl_runner.tb_hparams import bundled_keys

        values = {k: _hparam_value(v) for k, v in flat_config.items()}
        metrics = {tag: math.nan for tag in metric_tags}
        experiment, _, _ = hparams({**bundled_keys(), **values}, metrics)  # run's values: types
        _, start, end = hparams(values, metrics)  # the session holds this run's values only
        with self.writing():
            # SummaryWriter's public `file_writer` (set in its __init__) is this run's event file
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)
            rows = "\n".join(f"|{k}|{v}|" for k, v in values.items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}", 0)

    def commit(self, step: int) -> None:
        """On disk now what checkpoints/last.pt covers (a hard kill keeps at least that)."""
        with self.writing():
            self.writer.flush()

    def state_dict(self) -> dict[str, str | int]:
        return {}  # a resume needs only its step (purge_step)

    def close(self) -> None:
        """Flush and close; after a failure, which was said already, nothing more is written."""
        if not self.failed:
            with self.writing():
                self.writer.close()


def _quiet_writer_threads() -> None:
    """A dying TensorBoard writer thread prints its traceback, then the main thread raises the same
    error on its next write: TensorBoardLogger reports that one as one line, so the thread's is
    left out."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tb_writer", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":  # tensorboard's private class
            previous(args)

    hook.quiet_tb_writer = True
    threading.excepthook = hook


def _hparam_value(v: object) -> object:
    return v if isinstance(v, (bool, int, float, str)) else str(v)
