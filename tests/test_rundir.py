"""Runs never mix: unique default directories, one process per run directory, resume from the
checkpoint's own config, and the exit codes and paths a shell user relies on."""
from __future__ import annotations

import hashlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_runner import rundir
from rl_runner.checkpoint import load_checkpoint
from rl_runner.resume import hydra_quote
from tests.conftest import FAST, RL_RUN, SHORT_RUN, cli_env, error_line, read_results, run_cli
from tests.test_resume import interrupt_when_checkpointed


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def held(finished_run, tmp_path):
    """A copy of a finished run whose lock another process holds, as a live run's is."""
    run = tmp_path / "live run"
    shutil.copytree(finished_run, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rl_runner import rundir; "
         "rundir.lock(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True, env=cli_env())
    assert holder.stdout.readline().strip() == "held"
    yield run
    holder.kill()
    holder.wait()


def test_default_names_taken_in_the_same_second_get_a_suffix(tmp_path):
    base = tmp_path / "outputs" / "10-00-00_ppo_cartpole_s0"
    made = [rundir.claim_new(base) for _ in range(3)]
    assert [p.name for p in made] == [base.name, f"{base.name}-2", f"{base.name}-3"]


@pytest.mark.integration  # three rl-run processes at once; claim_new's naming: the test above
def test_three_launches_at_once_get_three_consistent_runs(tmp_path):
    lrs = ["0.001", "0.002", "0.003"]
    procs = [subprocess.Popen([str(RL_RUN), *SHORT_RUN, f"algo.lr={lr}"], cwd=tmp_path,
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for lr in lrs]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    runs = sorted(p.parent for p in (tmp_path / "outputs").rglob("results.json"))
    assert len(runs) == 3
    seen = set()
    for run in runs:
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        lr = next(lr for lr in lrs if f"algo.lr={lr}" in overrides)
        ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
        assert ckpt["config"]["algo"]["lr"] == float(lr)
        assert read_results(run)["status"] == "completed"
        assert not list(run.glob("checkpoints/*.tmp"))
        seen.add(lr)
    assert seen == set(lrs)


@pytest.mark.parametrize("how", ["same dir", "resume"])
def test_a_live_run_is_refused_and_left_byte_identical(held, refused_in_process, how):
    before = digests(held)
    args = [*SHORT_RUN, f"hydra.run.dir={held}"] if how == "same dir" else [f"resume={held}"]
    line = refused_in_process(args)
    assert "in use by another rl-run process" in line, line
    assert digests(held) == before


def test_a_finished_dir_is_refused_without_touching_it(finished_run, tmp_path,
                                                        refused_in_process):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digests(run)
    line = refused_in_process([*SHORT_RUN, "algo.lr=0.1", f"hydra.run.dir={run}"])
    assert "already holds a run" in line
    assert digests(run) == before  # .hydra/config.yaml and train.log too



def test_a_dir_of_other_files_is_not_called_a_run(tmp_path, refused_in_process):
    """It was refused as 'already holds a run; resume it with ...', a resume that cannot work."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    line = refused_in_process([*SHORT_RUN, f"hydra.run.dir={mine}"])
    assert "holds files that are not a run" in line and "resume=" not in line
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

def test_resume_refuses_an_edited_config_naming_the_key(finished_run, tmp_path,
                                                        refused_in_process):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    config.write_text(text.replace("gamma: ", "gamma: 0.5 #", 1))
    before = digests(run)
    line = refused_in_process([f"resume={run}"])
    assert "algo.gamma" in line and "0.5" in line, line
    assert digests(run) == before
    config.write_text(text.replace("activation: tanh", "activation: ${oc.env:RL_ACT,tanh}"))
    with pytest.MonkeyPatch.context() as mp:  # the variable changed between the sessions
        mp.setenv("RL_ACT", "relu")
        line = refused_in_process([f"resume={run}"])
    assert "algo.activation" in line and "relu" in line, line


def test_resume_refuses_a_replaced_dataset(finished_run, tmp_path):
    from rl_runner.rl_collect import main as rl_collect

    expert = tmp_path / "expert"  # rl-collect in this process, from a copy of a finished ppo run
    shutil.copytree(finished_run, expert)
    data = tmp_path / "data.npz"
    rl_collect([f"run={expert}", "episodes=2", f"out={data}"])
    run = tmp_path / "bc"
    args = ["algo=bc", "env=cartpole", *FAST, f"dataset.path={data}", "trainer.total_steps=4000",
            "trainer.checkpoint_every=100"]
    stopped = interrupt_when_checkpointed(args, run, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    other = tmp_path / "other.npz"
    rl_collect([f"run={expert}", "episodes=3", f"out={other}"])
    shutil.copy(other, data)
    before = digests(run)
    line = error_line(run_cli([f"resume={run}"], tmp_path))
    assert "dataset" in line and str(data) in line, line
    assert digests(run) == before  # train.log too: the trainer's refusal is not logged there


def test_a_run_dir_that_parses_as_several_values_is_refused(tmp_path, refused_in_process):
    line = refused_in_process([*SHORT_RUN, f"hydra.run.dir={tmp_path}/x, y"])
    assert "takes one path" in line
    assert not (tmp_path / "outputs").exists()


def test_a_run_dir_named_like_a_number_is_a_path(tmp_path):
    proc = run_cli(SHORT_RUN, tmp_path, run_dir=Path("nan"))
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path / "nan")["status"] == "completed"


def test_a_refused_check_leaves_no_stub_directory(tmp_path):
    """A check that only the trainer can make (the dataset file is read there)."""
    proc = subprocess.run([str(RL_RUN), "algo=bc", "env=cartpole", *FAST,
                           f"dataset.path={tmp_path / 'missing.npz'}"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "missing.npz" in error_line(proc)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]



def test_a_refused_run_empties_the_directory_the_user_made(tmp_path):
    """An empty hydra.run.dir the user made kept .hydra/, .lock and train.log after the trainer
    refused the run: the corrected command was then refused as 'already holds a run', and a
    resume found no checkpoint."""
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    proc = run_cli(["algo=bc", "env=cartpole", *FAST, f"dataset.path={tmp_path / 'missing.npz'}"],
                   tmp_path, run_dir=run_dir)
    assert "missing.npz" in error_line(proc)
    assert run_dir.is_dir() and not list(run_dir.iterdir())
    proc = run_cli(SHORT_RUN, tmp_path, run_dir=run_dir)
    assert proc.returncode == 0, proc.stderr

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_exits_128_plus_the_signal_and_resumes_with_the_printed_command(tmp_path,
                                                                                     sig):
    run = tmp_path / "a run, with [spaces]"
    args = [*SHORT_RUN, "trainer.total_steps=60000", "trainer.checkpoint_every=256"]
    proc = subprocess.Popen([str(RL_RUN), *args, f"hydra.run.dir={hydra_quote(str(run))}"],
                            cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, err
    assert read_results(run)["status"] == "interrupted"
    lines = [ln.strip() for ln in err.splitlines()]
    command = lines[lines.index(next(ln for ln in lines if "Resume with:" in ln)) + 1]
    argv = shlex.split(command)
    resumed = subprocess.run([str(RL_RUN), *argv[1:], "trainer.total_steps=1024"], cwd=tmp_path,
                             env=cli_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert read_results(run)["status"] == "completed"


def test_a_run_dir_through_a_file_is_one_line(tmp_path, refused_in_process):
    (tmp_path / "afile").write_text("x")
    line = refused_in_process([*SHORT_RUN, f"hydra.run.dir={tmp_path / 'afile' / 'run'}"])
    assert f"cannot write {tmp_path / 'afile' / 'run'}" in line, line


@pytest.mark.integration  # two sweeps at once; claim_new's naming: test_default_names_taken_...
def test_two_sweeps_launched_together_keep_their_own_dirs(tmp_path):
    procs = [subprocess.Popen([str(RL_RUN), "-m", *SHORT_RUN, f"algo.lr={lr}"], cwd=tmp_path,
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for lr in ("0.001", "0.002")]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    sweeps = sorted(p.parent for p in (tmp_path / "outputs" / "multirun").rglob("multirun.yaml"))
    assert len(sweeps) == 2
    lrs = set()
    for sweep in sweeps:
        jobs = [p.parent for p in sweep.glob("*/results.json")]
        assert len(jobs) == 1
        ckpt = load_checkpoint(jobs[0] / "checkpoints" / "last.pt")
        overrides = (jobs[0] / ".hydra" / "overrides.yaml").read_text()
        assert f"algo.lr={ckpt['config']['algo']['lr']}" in overrides
        lrs.add(ckpt["config"]["algo"]["lr"])
    assert lrs == {0.001, 0.002}


def test_a_resumed_run_says_running_until_it_ends(finished_run, tmp_path):
    """The old "completed" record must not stand while the resumed run trains on."""
    from omegaconf import OmegaConf

    from rl_runner.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = OmegaConf.create(load_checkpoint(run / "checkpoints" / "last.pt")["config"])
    cfg.trainer.total_steps = 1024
    trainer = Trainer(cfg, run, resume=True)
    seen = []
    learn_once = trainer._learn_once
    trainer._learn_once = lambda: (seen.append(read_results(run)["status"]), learn_once())[1]
    assert trainer.run()["status"] == "completed"
    assert seen and set(seen) == {"running"}
    assert read_results(run)["status"] == "completed"


@pytest.mark.parametrize("bad", ["trainer.total_steps=-1", "trainer.eval_every=abc",
                                 "trainer.torch_threads=0"])
def test_a_resume_refused_for_a_bad_value_writes_nothing(finished_run, tmp_path,
                                                         refused_in_process, bad):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digests(run)
    refused_in_process([f"resume={run}", bad])
    assert digests(run) == before  # train.log and .lock included


def test_seed_out_of_range_is_one_line_and_leaves_no_stub(tmp_path, refused_in_process):
    line = refused_in_process([*SHORT_RUN, "seed=-1"])  # cwd tmp_path: outputs/ would be here
    assert "seed=-1" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_repeat_jobs_run_in_progress_cannot_be_resumed(tmp_path, refused_in_process):
    job = tmp_path / "job"
    proc = subprocess.Popen([str(RL_RUN), *SHORT_RUN, "repeats=2", "trainer.total_steps=60000",
                             "trainer.checkpoint_every=256", f"hydra.run.dir={job}"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (job / "s0" / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        line = refused_in_process([f"resume={job / 's0'}"])
        assert "in use by another rl-run process" in line, line
    finally:
        proc.kill()
        proc.wait()
