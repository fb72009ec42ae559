"""A resumed run's train.log is written only once the resume is accepted.

Hydra opens <run>/train.log before rl-run's own checks of a resume can finish (the dataset's
fingerprint, the env state, the checkpoint's fit are checked by the trainer). Until the trainer
has restored the run, the lines for train.log are held in memory: a refused resume leaves the
run's train.log as it was, and the console still shows every line."""
from __future__ import annotations

import logging
from pathlib import Path

_held: tuple[list[logging.Handler], logging.handlers.BufferingHandler] | None = None


def hold(log_file: Path) -> None:
    """Hold back what the root logger would write to `log_file`."""
    import logging.handlers

    global _held
    root = logging.getLogger()
    target = Path(log_file).resolve()
    files = [h for h in root.handlers
             if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == target]
    if not files:
        return
    buffer = logging.handlers.BufferingHandler(capacity=1 << 30)
    for handler in files:
        root.removeHandler(handler)
    root.addHandler(buffer)
    _held = files, buffer


def accept() -> None:
    """The run is accepted: write what was held, and log to the file directly from now on."""
    global _held
    if _held is None:
        return
    files, buffer = _held
    root = logging.getLogger()
    root.removeHandler(buffer)
    for handler in files:
        for record in buffer.buffer:
            if record.levelno >= handler.level:
                handler.handle(record)
        root.addHandler(handler)
    _held = None


def drop() -> None:
    """The resume is refused: forget the held lines; nothing more goes to the file."""
    global _held
    if _held is not None:
        logging.getLogger().removeHandler(_held[1])
        _held = None
