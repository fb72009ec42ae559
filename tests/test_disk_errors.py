"""Unwritable output (DESIGN.md "Errors"): a full disk, a read-only folder or a path through a file
is one line naming the path and exit 2, found before any rollout where it can be, with no .tmp
left and nothing already written lost.

Tests run as root, which chmod does not stop: they use paths through a file, monkeypatched
OSErrors, and real tmpfs mounts (full or read-only; skipped where mounting is not allowed)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.summary.writer.record_writer import RecordWriter

from rl_runner import fileio, rl_collect, rl_eval
from rl_runner.datasets import Dataset, save_dataset
from rl_runner.errors import UserError
from rl_runner.tensorboard_logger import TensorBoardLogger
from rl_runner.fileio import write_atomic
from tests.conftest import PPO_FAST, run_cli, run_error_line, tool_error

ERRNOS = [errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, size, readonly=False, copy=None): a fresh tmpfs under tmp_path (a copy of the
    folder `copy` inside it as <mount>/run), unmounted afterwards; skips where mount fails."""
    mounted: list[Path] = []

    def mount(name: str, size: str, readonly: bool = False, copy: Path | None = None) -> Path:
        where = tmp_path / name
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(where)
        if copy is not None:
            shutil.copytree(copy, where / "run")
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def no_rollout(monkeypatch):
    """rl-eval's and rl-collect's rollouts fail the test if they are ever started."""
    def never(*args, **kwargs):
        raise AssertionError("the rollout ran before the output was checked")
    monkeypatch.setattr(rl_eval, "Evaluator", never)
    monkeypatch.setattr(rl_eval, "record", never)
    monkeypatch.setattr(rl_collect, "rollout", never)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".write-check-" in p.name]


def small_dataset(n: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(observations=rng.standard_normal((n, 4)).astype(np.float32),
                   actions=np.zeros(n, np.int64), rewards=np.ones(n, np.float32),
                   next_observations=rng.standard_normal((n, 4)).astype(np.float32),
                   terminations=np.zeros(n, bool), truncations=np.zeros(n, bool),
                   episode_starts=np.arange(n) == 0, metadata={"env_id": "CartPole-v1"})


# ---- rl-collect / rl-eval: checked before any rollout ---------------------------------------
@pytest.mark.parametrize("tail", ["x.npz", "sub/x.npz"])
def test_collect_out_through_a_file_is_one_line_before_the_rollout(cartpole_run, tmp_path,
                                                                    capsys, no_rollout, tail):
    file = tmp_path / "a-file"
    file.write_text("keep")
    line = tool_error(capsys, rl_collect.main, [f"run={cartpole_run}", f"out={file}/{tail}"],
                      "rl-collect")
    assert str(file) in line and "Not a directory" in line
    assert file.read_text() == "keep"


@pytest.mark.parametrize("tool", ["rl-eval", "rl-collect"])
def test_a_read_only_run_is_one_line_before_the_rollout(cartpole_run, tmpfs, capsys, no_rollout,
                                                        tool):
    run = tmpfs("ro", "16m", readonly=True, copy=cartpole_run) / "run"
    main = rl_eval.main if tool == "rl-eval" else rl_collect.main
    line = tool_error(capsys, main, [f"run={run}"], tool)
    assert str(run) in line and "Read-only file system" in line


@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
def test_eval_that_cannot_make_a_file_in_the_run_stops_before_the_episodes(
        cartpole_run, capsys, monkeypatch, no_rollout, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    line = tool_error(capsys, rl_eval.main, [f"run={cartpole_run}"], "rl-eval")
    assert line.endswith(f"cannot write {cartpole_run}: {os.strerror(code)}")


def test_a_refused_collect_leaves_no_folder_behind(cartpole_run, capsys):
    """The up-front check makes no folder; noise= on a Discrete env is refused in the rollout."""
    assert not (cartpole_run / "datasets").exists()
    tool_error(capsys, rl_collect.main, [f"run={cartpole_run}", "noise=0.1"], "rl-collect")
    assert not (cartpole_run / "datasets").exists()


# ---- atomic writes: old file intact, no temp file -------------------------------------------
@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
def test_write_atomic_failing_midway_keeps_the_old_file_and_leaves_no_tmp(tmp_path, monkeypatch,
                                                                          code):
    path = tmp_path / "results.json"
    path.write_text("old")
    real_write_bytes = Path.write_bytes

    def half_then_fail(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(UserError, match=f"^cannot write {path}: {os.strerror(code)}$"):
        write_atomic(path, "new" * 1000)
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_full_disk_keeps_old_files_and_leaves_no_tmp(tmpfs):
    disk = tmpfs("full", "64k")
    (disk / "results.json").write_text("old")
    with pytest.raises(UserError, match="No space left on device"):
        write_atomic(disk / "results.json", os.urandom(1 << 20))
    with pytest.raises(UserError, match=f"^cannot write {disk / 'd.npz'}: No space left"):
        save_dataset(disk / "d.npz", small_dataset(50_000))
    with pytest.raises(UserError, match=f"^cannot write {disk / 'last.pt'}: No space left"):
        fileio.write_atomic_with(disk / "last.pt", save_checkpoint)
    assert (disk / "results.json").read_text() == "old"
    assert sorted(p.name for p in disk.iterdir()) == ["results.json"]


def save_checkpoint(tmp: Path) -> None:
    """torch.save raises RuntimeError from the OSError of a file object (from a path, only a
    RuntimeError: the errno is lost), and `with` closes it, so the removed temp file frees space."""
    with open(tmp, "wb") as f:
        torch.save({"w": torch.zeros(1 << 18)}, f)


def test_writing_reports_the_os_error_behind_a_library_error_and_leaves_others_alone():
    def wrapped():
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("iostream error")  # as torch.save does

    def said(what):
        try:
            raise OSError(errno.EIO, "I/O error")
        except OSError:
            raise what from None

    with pytest.raises(UserError, match="^cannot write p: No space left on device$"):
        with fileio.writing("p"):
            wrapped()
    for error in (ValueError("not a write error"), UserError("a line of its own")):
        with pytest.raises(type(error), match=str(error)):
            with fileio.writing("p"):
                said(error)


def test_save_dataset_through_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / 'f' / 'd.npz'}: Not a dir"):
        save_dataset(tmp_path / "f" / "d.npz", small_dataset(10))


# ---- TensorBoard: a dying writer thread stops the run ---------------------------------------
@pytest.mark.parametrize("code", ERRNOS, ids=errno.errorcode.get)
def test_a_dying_tensorboard_writer_is_one_user_error_naming_the_folder(tmp_path, monkeypatch,
                                                                        capfd, code):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.scalar("charts/x", 0.0, 0)

    def fail(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(RecordWriter, "write", fail)
    with pytest.raises(UserError) as e:  # the thread's error shows on a later write
        for step in range(1, 10_000):
            logger.metrics({"loss": 1.0}, step)
            logger.scalar("charts/x", 1.0, step)
    assert str(e.value) == f"cannot write {tmp_path / 'tb'}: {os.strerror(code)}"
    logger.close()  # said once already: closing adds nothing
    assert capfd.readouterr().err == ""  # no traceback from the writer thread


def test_tensorboard_folder_through_a_file_is_one_user_error(tmp_path):
    (tmp_path / "run").write_text("keep")
    for tb in (tmp_path / "run", tmp_path / "run" / "tb"):
        with pytest.raises(UserError, match=f"^cannot write {tb}: Not a directory$"):
            TensorBoardLogger(tb)


def test_tensorboard_on_a_full_disk_is_one_user_error(tmpfs):
    logger = TensorBoardLogger(tmpfs("full", "64k") / "tb")
    with pytest.raises(UserError, match="tb: No space left on device$"):
        for step in range(100_000):
            logger.scalar("charts/x", float(step), step)
    logger.close()


# ---- rl-run on a disk that fills up during the run ------------------------------------------
def test_rl_run_on_a_disk_that_fills_up_is_one_line_and_leaves_no_tmp(tmpfs, tmp_path):
    disk = tmpfs("disk", "2m")
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - 200_000))  # room for the start, not two .pt
    run = disk / "run"
    proc = run_cli([*PPO_FAST, "trainer.total_steps=8192"], tmp_path, run_dir=run)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]  # after progress
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1], proc.stderr
    assert errors[0].startswith(f"rl-run: error: cannot write {run}"), errors[0]
    assert errors[0].endswith(": No space left on device"), errors[0]
    assert leftovers(disk) == []


def test_a_full_disk_keeps_the_earlier_last_pt_and_records_the_failure(tmpfs, tmp_path):
    """Room for the first best.pt and last.pt (~140 kB each), not for the next .pt's temp file:
    the run stops with one line, last.pt from step 1024 loads, results.json says failed."""
    from rl_runner.checkpoint import load_checkpoint, nonfinite_paths

    disk = tmpfs("disk", "2m")
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - 400_000))
    run = disk / "run"
    proc = run_cli([*PPO_FAST, "trainer.total_steps=8192"], tmp_path, run_dir=run)
    line = run_error_line(proc)
    assert line.startswith(f"rl-run: error: cannot write {run / 'checkpoints'}"), line
    assert line.endswith(": No space left on device"), line
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["counters"]["env_steps"] >= 1024 and nonfinite_paths(last["algo"]) == []
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "failed" and "No space left" in results["error"]
    assert leftovers(disk) == []


def test_a_failed_write_leaves_no_folder_it_made(tmp_path):
    def fail(_tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match="No space left"):
        fileio.write_atomic_with(tmp_path / "datasets" / "sub" / "x.npz", fail)
    assert list(tmp_path.iterdir()) == []
