"""`rl-run ... logger=[tensorboard,mlflow]`: MLflow holds the TensorBoard curves at the same steps,
and SIGTERM then `resume=` continues the same MLflow run without a duplicated step."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, RL_RUN, cli_env, read_results, read_scalars, run_cli

pytest.importorskip("mlflow")
ARGS = ["algo=ppo", "env=cartpole", *FAST, "trainer.total_steps=20480",
        "trainer.checkpoint_every=512", "trainer.eval_every=2048", "seed=1",
        "logger=[tensorboard,mlflow]"]
TAGS = ("eval/return_mean", "losses/policy_loss", "charts/episodic_length")


def sigterm_when_checkpointed(args: list[str], run_dir: Path, cwd: Path) -> int:
    proc = subprocess.Popen([str(RL_RUN), *args, f"hydra.run.dir={run_dir}"], cwd=cwd,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    try:
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
        time.sleep(1.0)  # a few more updates logged after the checkpoint
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def test_mlflow_holds_the_tensorboard_steps_across_sigterm_and_resume(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    # a store path relative to where rl-run starts; the resume starts elsewhere
    relative = "logger.mlflow.tracking_uri=sqlite:///store/mlflow.db"
    assert sigterm_when_checkpointed([*ARGS, relative], run_dir, tmp_path) == 143
    assert read_results(run_dir)["status"] == "interrupted"
    (tmp_path / "elsewhere").mkdir()
    resumed = run_cli([f"resume={run_dir}"], tmp_path / "elsewhere")
    assert resumed.returncode == 0, resumed.stderr
    assert read_results(run_dir)["status"] == "completed"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("rl-runner")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["algo.n_steps"] == "32"
    tb = read_scalars(run_dir / "tb")
    for tag in TAGS:
        history = client.get_metric_history(runs[0].info.run_id, tag)
        steps = [m.step for m in history]
        assert sorted(steps) == sorted(s for s, _ in tb[tag]), tag
        if tag != "charts/episodic_length":  # several envs may end episodes at one step
            assert len(steps) == len(set(steps)), tag
    assert max(m.step for m in client.get_metric_history(runs[0].info.run_id,
                                                         "eval/return_mean")) == 20480
    assert not (tmp_path / "elsewhere" / "store").exists()
