"""Run and sweep directories: unique by default, and held by one process at a time.

The default directory names have one-second resolution, so launches in the same second would
share one. Instead the name is claimed with an exclusive mkdir (the second launch gets `<name>-2`,
the third `<name>-3`, ...), and every process that writes into a run directory first takes an
exclusive lock on its `.lock` file, held until the process exits. A second run on a live run's
directory, or `resume=` of a run that is still training, is refused before anything is written."""
from __future__ import annotations

import fcntl
import itertools
import os
import shutil
from pathlib import Path

from rl_runner.errors import UserError
from rl_runner.fileio import os_error_line, writing

LOCK = ".lock"
RUN_FILES = (".hydra", "train.log", "results.json", "checkpoints", "tb")  # what a run writes
_held: dict[Path, int] = {}  # directory -> the open lock file: the lock lives as long as it does
_made: set[Path] = set()  # directories this process created (a stub of them may be removed)
# directories the user made, empty when claimed: the names they held then (a lock file at most);
# a refused run removes what it added to them and leaves the directory
_found_empty: dict[Path, set[str]] = {}


def holds_something(folder: Path) -> bool:
    """Whether `folder` exists with anything in it besides a lock file."""
    return folder.is_dir() and any(p.name != LOCK for p in folder.iterdir())


def claim_new(base: Path) -> Path:
    """Create and lock a new directory named `base`, or `base-2`, `base-3`, ... if taken."""
    with writing(base):
        base.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            os.mkdir(candidate)  # atomic: of two launches in the same second, one gets it
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(os_error_line(candidate, e)) from None
        _made.add(candidate.resolve())
        lock(candidate)
        return candidate
    raise AssertionError("unreachable")


def lock(folder: Path) -> None:
    """Take `folder`'s exclusive lock for the rest of this process, or refuse with one line.

    The lock file is opened (made empty if missing) and never written: a refused process
    leaves a run's files as they were."""
    folder = Path(folder)
    if folder.resolve() in _held:
        return
    path = folder / LOCK
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _holder(fd)
        os.close(fd)
        raise UserError(f"{folder} is in use by another rl-run process"
                        f"{f' (pid {owner})' if owner else ''}; wait for it to end "
                        "or stop it, or choose another directory") from None
    _held[folder.resolve()] = fd  # the file stays empty: a lock, not a record


def _holder(fd: int) -> str | None:
    """The pid that holds the flock on `fd`'s file, from /proc/locks (Linux), or None."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                return fields[4]
    except OSError:
        pass
    return None


def release(folder: Path) -> None:
    """Give up `folder`'s lock (a stub directory about to be removed)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def remove_stub(run_dir: Path) -> None:
    """Remove a run directory this process made, when a check refused the run before it
    trained (nothing in it but Hydra's .hydra/, train.log, tb/): rl-report then lists no stub.
    A directory the user made, empty, is emptied again, so the corrected command can use it."""
    run_dir = Path(run_dir)
    where = run_dir.resolve()
    if where not in _made and where not in _found_empty:
        return
    if (run_dir / "checkpoints").exists() or (run_dir / "results.json").exists():
        return
    # removed while still locked: another rl-run may take the directory once it is released
    if where in _made:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        for entry in run_dir.iterdir():
            if entry.name in _found_empty[where]:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    release(run_dir)


def is_locked(folder: Path) -> bool:
    """Whether another process holds `folder`'s lock now (opens the file read-only)."""
    path = Path(folder) / LOCK
    if Path(folder).resolve() in _held or not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def claim_explicit(run_dir: Path) -> None:
    """A directory the user named (hydra.run.dir=...): lock it, unless it holds a run."""
    run_dir = Path(run_dir)
    if is_locked(run_dir):
        lock(run_dir)  # refuses, naming the owner
    if holds_something(run_dir):
        if not any((run_dir / name).exists() for name in RUN_FILES):  # a user's own files
            raise UserError(f"{run_dir} already holds files that are not a run; choose another "
                            "hydra.run.dir, or an empty one")
        raise UserError(f"{run_dir} already holds a run; resume it with resume={run_dir} "
                        "or choose another hydra.run.dir")
    with writing(run_dir):
        if not run_dir.is_dir():
            run_dir.mkdir(parents=True)
            _made.add(run_dir.resolve())
        else:
            _found_empty[run_dir.resolve()] = {p.name for p in run_dir.iterdir()}
    lock(run_dir)
    if holds_something(run_dir):  # another process was quicker
        release(run_dir)
        raise UserError(f"{run_dir} was just taken by another run; choose another hydra.run.dir")
