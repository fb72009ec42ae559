"""The trainer's guards: no checkpoint ever holds NaN/Inf, a non-finite evaluation is never the
best, and a budget below one update is refused."""
from __future__ import annotations

import math

import pytest

from rl_runner.checkpoint import load_checkpoint, nonfinite_paths
from rl_runner.trainer import Trainer
from tests.conftest import FAST, REPO, compose, error_line, read_results, run_cli, run_error_line

DIVERGING = ["algo=pg", "env=cartpole", *FAST, "algo.lr=1e300", "trainer.total_steps=8192"]


@pytest.mark.parametrize("every", ["1024", "0"])
def test_a_diverging_run_never_saves_nonfinite_parameters(tmp_path, every):
    """lr=1e300: the first update makes the weights inf; the losses only show it one update
    later, after an evaluation and a checkpoint (every=1024) or before either (every=0)."""
    run = tmp_path / "run"
    line = run_error_line(run_cli([*DIVERGING, f"trainer.eval_every={every}",
                                   f"trainer.checkpoint_every={every}"], tmp_path, run_dir=run))
    assert "NaN/Inf" in line, line
    assert read_results(run)["status"] == "failed"
    saved = list(run.glob("checkpoints/*.pt"))
    for path in saved:
        assert nonfinite_paths(load_checkpoint(path)["algo"]) == [], path
    if not saved:
        assert "no checkpoint had been saved" in line, line


def test_a_nonfinite_evaluation_is_never_an_improvement(tmp_path, monkeypatch):
    cfg = compose(["algo=pg", "env=cartpole", *FAST, "trainer.total_steps=1024"])
    trainer = Trainer(cfg, tmp_path)
    for value in (math.inf, math.nan):
        monkeypatch.setattr(trainer.evaluator, "run", lambda _act, stop=None, v=value: {
            "return_mean": v, "return_std": 0.0, "length_mean": 1.0, "episodes": 1})
        trainer._evaluate()
        assert trainer.best_eval == -math.inf
        assert not (tmp_path / "checkpoints" / "best.pt").exists()
    trainer.logger.close()
    trainer.envs.close()
    trainer.evaluator.close()


def test_a_budget_below_one_update_is_refused(tmp_path):
    line = error_line(run_cli(["algo=ppo", "env=cartpole", *FAST, "trainer.total_steps=100"],
                              tmp_path))
    assert "less than one update" in line and "256 env steps" in line, line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no stub run folder


def test_weights_gone_inf_are_never_saved_and_the_last_good_checkpoint_stays(tmp_path):
    run = tmp_path / "run"
    line = run_error_line(run_cli(
        ["algo._target_=tests.helpers.nan_algo.InfWeightsAfter3PPO", "env=cartpole", *FAST,
         "trainer.total_steps=4096", "trainer.checkpoint_every=256", "trainer.eval_every=4096"],
        tmp_path, run_dir=run, pythonpath=REPO))
    assert "stopped before saving last.pt" in line, line
    assert "last.pt keeps the last good state (env step 768)" in line, line
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["counters"]["env_steps"] == 768 and nonfinite_paths(last["algo"]) == []
    assert read_results(run)["status"] == "failed"
