"""TensorBoard output (tags fixed by DESIGN.md) and a console handler that spares the progress bar."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import tqdm
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

# metric keys an algorithm returns that are not losses
CHART_KEYS = {"learning_rate": "charts/learning_rate"}


class TqdmHandler(logging.StreamHandler):
    """Console log lines printed above the tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


class TBLogger:
    """Scalars against environment steps; `purge_step` drops what a killed run logged after its
    last checkpoint, so a resumed run continues the same curves without duplicated steps."""

    def __init__(self, log_dir: Path, purge_step: int | None = None, flush_secs: int = 20):
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=flush_secs)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """Algorithm metrics: `losses/<name>` unless the key names its own namespace."""
        for key, value in metrics.items():
            tag = CHART_KEYS.get(key) or (key if "/" in key else f"losses/{key}")
            self.writer.add_scalar(tag, value, step)

    def hparams(self, flat_config: dict[str, object], metric_tags: list[str]) -> None:
        """The HPARAMS-tab record, in this run's own event file (add_hparams would start a new
        run directory), plus a markdown table in the TEXT tab."""
        values = {k: _hparam_value(v) for k, v in flat_config.items()}
        for summary in hparams(values, {tag: math.nan for tag in metric_tags}):
            self.writer._get_file_writer().add_summary(summary)
        rows = "\n".join(f"|{k}|{v}|" for k, v in values.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}", 0)

    def close(self) -> None:
        self.writer.close()


def _hparam_value(v: object) -> object:
    return v if isinstance(v, (bool, int, float, str)) else str(v)
