"""A sweep job whose training process dies hard fails alone (rl_runner.isolation), and training
processes do not outlive the sweep."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, RL_RUN, cli_env, read_results
from tests.test_sweeps import TINY, check_summary_matches_results, job_dirs, md_job_rows, sweep

EXIT_PPO = "algo._target_=tests.helpers.crash_algo.ExitInSeed1PPO"  # os._exit(3) in seed 1
KILLED_PPO = "algo._target_=tests.helpers.crash_algo.KilledInSeed1PPO"  # SIGKILL in seed 1
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
SHORT = [*TINY, "trainer.total_steps=1024", "trainer.eval_every=1024", "seed=0,1,2"]


def check_one_died(sweep_dir: Path, error: str) -> None:
    """Job 1 (seed 1) failed with `error` in results.json and summary.md; jobs 0 and 2 completed."""
    jobs = job_dirs(sweep_dir)
    assert [read_results(j)["status"] for j in jobs] == ["completed", "failed", "completed"]
    assert read_results(jobs[1])["error"] == error
    rows = check_summary_matches_results(sweep_dir)
    assert rows[jobs[1].name]["error"] == error
    assert "3 jobs, 2 completed, 1 failed" in (sweep_dir / "summary.md").read_text()


@pytest.mark.integration  # joblib worker processes; the basic launcher's cases cover the rest
def test_a_killed_job_fails_alone_under_joblib(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*SHORT, KILLED_PPO, *JOBLIB])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # three jobs on two workers: one worker's second job ran after its first one's child
    check_one_died(sweep_dir, "the training process was killed by signal SIGKILL "
                              "(out of memory, or killed from outside)")


def test_a_job_that_exits_hard_fails_alone_under_the_basic_launcher(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*SHORT, EXIT_PPO])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_one_died(sweep_dir, "the training process exited with code 3 without writing results")
    assert "job failed, the sweep goes on" in proc.stderr


def test_fail_fast_stops_at_a_job_that_died(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*SHORT, KILLED_PPO, "trainer.fail_fast=true"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert [read_results(j)["status"] for j in jobs] == ["completed", "failed"]
    assert "SIGKILL" in md_job_rows(sweep_dir)[jobs[1].name]["error"]


def stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, ... ([] once reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended)."""
    return stat(pid)[:1] not in ([], ["Z"])


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("launcher, at_once", [
    ([], 1), pytest.param(JOBLIB, 2, marks=pytest.mark.integration)])  # joblib: worker processes
def test_a_killed_sweep_leaves_no_training_process(tmp_path, launcher, at_once):
    """kill -9 of the sweep: its training processes stop as on SIGTERM (joblib's workers live
    on, orphaned: their training processes watch the sweep's main process too)."""
    pid_dir, sweep_dir, workers = tmp_path / "pids", tmp_path / "sweep", []
    env = {**cli_env(REPO), "RL_TEST_PID_DIR": str(pid_dir)}
    proc = subprocess.Popen([str(RL_RUN), "-m", *TINY, EXIT_PPO, "seed=0,2", *launcher,
                             "trainer.total_steps=100000000", "trainer.checkpoint_every=1024",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while (time.time() < deadline
               and len(list(sweep_dir.glob("*/checkpoints/last.pt"))) < at_once):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        training = [int(p.name) for p in pid_dir.iterdir()]
        parents = {int(stat(pid)[1]) for pid in training}
        workers = [pid for pid in parents if stat(pid)[1:2] == [str(proc.pid)]]
        assert len(training) == at_once and proc.pid not in training
        proc.kill()
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(map(alive, training)):
            time.sleep(0.2)
        assert not any(map(alive, training))
    finally:  # loky's orphaned workers would idle for minutes
        for pid in filter(alive, [proc.pid, *workers, *(int(p.name) for p in pid_dir.glob("*"))]):
            os.kill(pid, signal.SIGKILL)
        proc.stderr.close()
    # they stopped as on SIGTERM: last.pt saved, results.json written
    for job in job_dirs(sweep_dir):
        assert read_results(job)["status"] == "interrupted"
        assert "SIGTERM received" in (job / "train.log").read_text()


def test_ctrl_c_reaches_the_training_process_once(tmp_path):
    """Ctrl-C signals the whole process group: the job's process does not pass it on again (a
    second signal would make the trainer quit without saving)."""
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([str(RL_RUN), "-m", *TINY, "seed=0,1", "trainer.total_steps=100000000",
                             "trainer.checkpoint_every=1024", f"hydra.sweep.dir={sweep_dir}"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep_dir.glob("0_*/checkpoints/last.pt")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    (job,) = job_dirs(sweep_dir)
    assert read_results(job)["status"] == "interrupted"
    assert "last.pt saved. Resume with" in err
