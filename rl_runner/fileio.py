"""Writing output safely: an up-front writability check, atomic writes, and OSError as one line.

Every file rl-runner writes goes through here, so that a full disk, a read-only folder or a path
through a file ends with one line naming the path (exit 2), never a traceback or a stray .tmp."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from rl_runner.errors import UserError


def os_error_line(path: Path | str, e: OSError) -> str:
    """`cannot write <path>: <why>` (e.g. No space left on device)."""
    return f"cannot write {path}: {e.strerror or type(e).__name__}"


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn an OSError in the block into a UserError naming `path`; also one that a library
    wrapped in its own error (torch.save raises RuntimeError from its file's OSError)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        os_error = os_error_behind(e)
        if os_error is None:
            raise
        raise UserError(os_error_line(path, os_error)) from None


def os_error_behind(e: BaseException | None) -> OSError | None:
    """The OSError that `e` is, or that it was raised from (the chain a traceback shows)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return e


def make_folder(folder: Path) -> None:
    """mkdir -p, where a file on the way is `Not a directory` (mkdir alone says `File exists`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


def check_writable(folder: Path | str, create: bool = True) -> None:
    """Create `folder` if needed and prove a file can be made in it; else one line (UserError).
    create=False leaves nothing behind (for a command that may still be refused): the proof is
    made in the nearest folder on the way that exists, where `folder` would be created."""
    folder = Path(folder)
    with writing(folder):
        if create:
            make_folder(folder)
        where = folder if create else next(p for p in (folder, *folder.parents) if p.exists())
        fd, probe = tempfile.mkstemp(dir=where, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)


def write_atomic_with(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a per-process temp file beside `path`, then rename it onto `path`.

    A kill never leaves a torn file; an OSError (disk full, read-only) removes the temp file,
    leaves the earlier `path` as it was, and becomes a UserError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        with writing(path):
            make_folder(path.parent)
            write(tmp)
            os.replace(tmp, path)
            made = []
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        for folder in made:  # a failed write leaves no empty folders it made (deepest first)
            with contextlib.suppress(OSError):
                folder.rmdir()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically (write_atomic_with)."""
    raw = data if isinstance(data, bytes) else data.encode()
    write_atomic_with(Path(path), lambda tmp: tmp.write_bytes(raw))


def write_json(path: Path, results: dict) -> dict:
    """Write results atomically (a temp file, then a rename); returns what was written."""
    # strict JSON: a value not measured (no evaluation yet) is null, not NaN
    results = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in results.items()}
    write_atomic(path, json.dumps(results, indent=2) + "\n")
    return results
