"""Ctrl-C then `rl-run resume=<dir>` gives the numbers and curves of an uninterrupted run (CPU)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (FAST, NUMBERS, RL_RUN, cli_env, count_summary_tags, error_line,
                            read_results, read_scalars, run_cli)

# ~40 rollouts of 512 steps: long enough that SIGINT always lands mid-run, short on 2 cores
ARGS = ["algo=ppo", "env=cartpole", *FAST, "trainer.total_steps=20480",
        "trainer.checkpoint_every=512", "trainer.eval_every=4096", "seed=1"]
CURVES = ("losses/policy_loss", "losses/value_loss", "charts/episodic_return", "eval/return_mean")
# off-policy: an update per env step with small nets; the replay buffer is saved in last.pt
SAC_ARGS = ["algo=sac", "env=pendulum", "env.n_envs=1", *FAST, "algo.hidden_sizes=[32,32]",
            "algo.batch_size=64", "algo.learning_starts=200", "trainer.total_steps=1000",
            "trainer.checkpoint_every=200", "trainer.eval_every=500", "trainer.torch_threads=1",
            "seed=1"]
SAC_CURVES = ("losses/qf_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss",
              "charts/episodic_return", "eval/return_mean")
# offline: 2 episodes of the bundled CartPole expert, cached in the test's own directory
BC_ARGS = ["algo=bc", "env=cartpole", *FAST, "dataset.expert_episodes=2",
           "trainer.total_steps=2000", "trainer.checkpoint_every=100", "trainer.eval_every=500",
           "seed=1"]
BC_CURVES = ("losses/bc_loss", "losses/val_loss", "eval/return_mean")
CASES = {"ppo": (ARGS, CURVES),
         "sac": ([*SAC_ARGS, "trainer.save_replay_buffer=true"], SAC_CURVES),
         "bc": (BC_ARGS, BC_CURVES)}


def interrupt_when_checkpointed(args: list[str], run_dir: Path, cwd: Path,
                                timeout: float = 120) -> subprocess.CompletedProcess:
    """Start rl-run, send SIGINT as soon as checkpoints/last.pt exists, wait for the exit."""
    proc = subprocess.Popen([str(RL_RUN), *args, f"hydra.run.dir={run_dir}"], cwd=cwd,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    last = run_dir / "checkpoints" / "last.pt"
    try:
        while not last.exists():
            assert proc.poll() is None, f"rl-run exited before its first checkpoint:\n" \
                                        f"{proc.communicate()[1]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request, tmp_path_factory):
    """A: uninterrupted. B: the same command, SIGINT after its first checkpoint, then resumed."""
    args, curves = CASES[request.param]
    base = tmp_path_factory.mktemp(f"resume_{request.param}")
    a_dir, b_dir = base / "A", base / "B"
    with pytest.MonkeyPatch.context() as mp:  # the subprocesses inherit it
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        a = run_cli([*args, f"hydra.run.dir={a_dir}"], base)
        assert a.returncode == 0, a.stderr
        stopped = interrupt_when_checkpointed(args, b_dir, base)
        interrupted = read_results(b_dir)
        resumed = run_cli([f"resume={b_dir}"], base)
    return {"A": a_dir, "B": b_dir, "stopped": stopped, "interrupted": interrupted,
            "resumed": resumed, "curves": curves}


def test_sigint_saves_and_says_how_to_resume(runs):
    stopped, interrupted = runs["stopped"], runs["interrupted"]
    assert stopped.returncode == 130, stopped.stderr  # interrupted: `rl-run ... && next` stops
    assert "Traceback" not in stopped.stderr
    assert "rl-run resume=" in stopped.stdout + stopped.stderr
    assert str(runs["B"]) in stopped.stdout + stopped.stderr
    assert interrupted["status"] == "interrupted"
    # the signal landed mid-run, else this test proves nothing about resuming
    assert 0 < interrupted["env_steps"] < read_results(runs["A"])["env_steps"]


def test_resume_finishes_with_the_uninterrupted_numbers(runs):
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_results(runs["A"]), read_results(runs["B"])
    assert b["status"] == "completed"
    assert {k: b[k] for k in NUMBERS} == {k: a[k] for k in NUMBERS}
    assert b["wall_seconds"] > runs["interrupted"]["wall_seconds"]  # time of both sessions


def test_resume_keeps_the_run_config(runs):
    # resume writes into the run it continues and leaves its .hydra/ as it was
    assert not list(runs["B"].parent.glob("outputs"))
    assert "resume" not in (runs["B"] / ".hydra" / "overrides.yaml").read_text()


def test_resumed_curves_have_no_duplicated_steps(runs):
    scalars = read_scalars(runs["B"] / "tb")
    steps = [s for s, _ in scalars[runs["curves"][0]]]
    assert len(steps) == len(set(steps))
    assert steps == sorted(steps)
    assert count_summary_tags(runs["B"] / "tb", "_hparams_/experiment") == 1


def test_resumed_curves_equal_the_uninterrupted_ones(runs):
    sa, sb = read_scalars(runs["A"] / "tb"), read_scalars(runs["B"] / "tb")
    for tag in runs["curves"]:
        assert sb[tag] == sa[tag], tag


def test_resume_with_a_larger_budget_continues(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(["algo=ppo", "env=cartpole", *FAST, "trainer.total_steps=2048",
                     f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = read_results(run_dir)
    assert before["env_steps"] == 2048

    def written():
        return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    files = written()
    for same in ([], ["trainer.total_steps=2048"]):  # nothing left to do: refused, untouched
        again = run_cli([f"resume={run_dir}", *same], tmp_path)
        line = error_line(again)
        assert "completed its whole budget of 2048 env steps" in line, line
        assert "raise trainer.total_steps" in line and written() == files
    more = run_cli([f"resume={run_dir}", "trainer.total_steps=4096"], tmp_path)
    assert more.returncode == 0, more.stderr
    after = read_results(run_dir)
    assert after["status"] == "completed"
    assert after["env_steps"] == 4096
    assert after["grad_steps"] > before["grad_steps"]
    steps = [s for s, _ in read_scalars(run_dir / "tb")["losses/policy_loss"]]
    assert steps[-1] == 4096 and len(steps) == len(set(steps))


def test_sac_resume_without_the_buffer_says_so_and_trains_on(tmp_path):
    run_dir = tmp_path / "run"
    stopped = interrupt_when_checkpointed(SAC_ARGS, run_dir, tmp_path)
    assert stopped.returncode == 130, stopped.stderr  # interrupted: `rl-run ... && next` stops
    interrupted = read_results(run_dir)
    assert 0 < interrupted["env_steps"] < 1000
    assert "replay_buffer" not in torch.load(run_dir / "checkpoints" / "last.pt",
                                             weights_only=False)
    resumed = run_cli([f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    output = resumed.stdout + resumed.stderr
    assert "holds no replay buffer" in output and "starts empty" in output
    after = read_results(run_dir)
    assert after["status"] == "completed" and after["env_steps"] == 1000
    assert after["grad_steps"] > interrupted["grad_steps"]
