"""rl_runner.logger: the fan-out, the registry of bundled backends, and MLflow beside TensorBoard
(read back through each library's own reader), including a resume after a hard kill."""
from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

import pytest

from rl_runner.errors import UserError
from rl_runner.logger import FanOutLogger, build_loggers, check_loggers
from tests.conftest import compose, read_scalars

TB = "rl_runner.tensorboard_logger.TensorBoardLogger"
MLFLOW = "rl_runner.mlflow_logger.MLflowLogger"


def both(store: Path, **mlflow) -> dict:
    return {"tensorboard": {"_target_": TB, "flush_secs": 20},
            "mlflow": {"_target_": MLFLOW, "tracking_uri": f"sqlite:///{store}",
                       "experiment": "test", **mlflow}}


def log_steps(logger, steps) -> None:
    """What the trainer logs: episodes, an update's metrics, evaluations."""
    for step in steps:
        logger.scalar("charts/episodic_return", float(step), step)
        logger.metrics({"policy_loss": 1.0 / step, "learning_rate": 3e-4}, step)
        if step % 4 == 0:
            logger.scalar("eval/return_mean", 2.0 * step, step)


def mlflow_steps(store: Path, run_id: str) -> dict[str, list[int]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    keys = client.get_run(run_id).data.metrics
    return {k: [m.step for m in client.get_metric_history(run_id, k)] for k in keys}


# ---- the fan-out and the registry -------------------------------------------------------------
class Recorder:
    def __init__(self, name: str, calls: list, fail_close: bool = False):
        self.name, self.calls, self.fail_close = name, calls, fail_close

    def __getattr__(self, method):
        return lambda *args: self.calls.append((self.name, method, args))

    def state_dict(self):
        return {"id": self.name}

    def close(self):
        self.calls.append((self.name, "close", ()))
        if self.fail_close:
            raise UserError(f"{self.name} failed")


def test_the_fan_out_forwards_every_call_in_order_and_closes_all_after_a_failure():
    calls: list = []
    fan = FanOutLogger({"a": Recorder("a", calls, fail_close=True), "b": Recorder("b", calls)})
    fan.scalar("charts/x", 1.0, 5)
    fan.metrics({"loss": 2.0}, 5)
    fan.hparams({"seed": 0}, ["eval/return_mean"])
    fan.commit(5)
    assert fan.state_dict() == {"a": {"id": "a"}, "b": {"id": "b"}}
    with pytest.raises(UserError, match="^a failed$"):
        fan.close()
    assert [c[:2] for c in calls] == [(n, m) for m in ("scalar", "metrics", "hparams", "commit",
                                                       "close") for n in "ab"]


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "tests.no_such.Logger", 3])
def test_a_target_outside_the_bundled_loggers_is_refused_in_one_line(tmp_path, target):
    cfg = {"tensorboard": {"_target_": target}}
    with pytest.raises(UserError, match=r"^logger\.tensorboard\._target_=.* is not a bundled "
                                        r"logger; allowed: rl_runner\.tensorboard_logger"):
        build_loggers(cfg, tmp_path, None, None)
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("cfg, message", [
    ({"tensorboard": {"_target_": TB, "flush_secs": 0}}, "flush_secs=0 must be positive"),
    ({"tensorboard": {"_target_": TB, "flush": 5}}, "tensorboard.flush is not a key of this"),
    ({"tensorboard": {"_target_": TB}, "mlflow": {"tracking_uri": "x"}}, "mlflow is not a logger"),
    ({"tensorboard": {"_target_": TB}, "mlflow": {"_target_": MLFLOW, "experiment": 3}},
     "experiment=3 has the wrong type"),
])
def test_bad_logger_options_are_refused_in_one_line(cfg, message):
    with pytest.raises(UserError, match=message):
        check_loggers(cfg)


def test_the_logger_group_takes_a_list_and_each_option_lands_under_its_own_key():
    assert set(compose().logger) == {"tensorboard"}
    cfg = compose(["logger=[tensorboard,mlflow]", "logger.tensorboard.flush_secs=5",
                   "logger.mlflow.experiment=mine"])
    assert cfg.logger.tensorboard == {"_target_": TB, "flush_secs": 5}
    assert cfg.logger.mlflow._target_ == MLFLOW and cfg.logger.mlflow.experiment == "mine"
    assert set(check_loggers(cfg.logger)) == {"tensorboard", "mlflow"}


def test_tensorboard_is_added_when_a_list_leaves_it_out(tmp_path, caplog):
    cfg = compose(["logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"])
    with caplog.at_level(logging.INFO, logger="rl_runner"):
        logger = build_loggers(cfg.logger, tmp_path / "run", None, None)
    logger.close()
    assert list(logger.backends) == ["tensorboard", "mlflow"]
    assert "TensorBoard is always on" in caplog.text
    assert any((tmp_path / "run" / "tb").iterdir())


def test_a_config_from_before_named_options_is_tensorboards(tmp_path):
    logger = build_loggers({"flush_secs": 20}, tmp_path, 100, None)  # an old checkpoint's
    logger.close()
    assert list(logger.backends) == ["tensorboard"]


def test_without_the_mlflow_extra_the_line_names_the_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"^logger\.mlflow needs mlflow, which is not installed: "
                                        r"pip install 'rl-runner\[mlflow\]'$"):
        check_loggers(both(Path("m.db")))


# ---- MLflow beside TensorBoard ----------------------------------------------------------------
def test_mlflow_gets_the_same_tags_and_steps_as_tensorboard_with_params_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", tmp_path / "store" / "mlflow.db"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    logger = build_loggers(both(store), run_dir, None, None)
    logger.hparams({"algo.lr": 3e-4, "algo.hidden_sizes": [64, 64], "env.kwargs.a(b)": None},
                   ["eval/return_mean"])
    log_steps(logger, range(1, 9))
    logger.commit(8)
    (run_dir / "results.json").write_text(json.dumps({"status": "completed"}))
    logger.close()

    run_id = logger.state_dict()["mlflow"]["run_id"]
    tb = {tag: [s for s, _ in values] for tag, values in read_scalars(run_dir / "tb").items()}
    assert mlflow_steps(store, run_id) == tb
    assert set(tb) == {"charts/episodic_return", "losses/policy_loss", "charts/learning_rate",
                       "eval/return_mean"}
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {"algo.lr": "0.0003", "algo.hidden_sizes": "[64, 64]",
                               "env.kwargs.a_b_": "None"}
    assert {a.path for a in client.list_artifacts(run_id)} == {"results.json", "config.yaml"}
    # a new experiment keeps its artifacts beside the sqlite store
    assert (store.parent / "mlartifacts").is_dir()


def test_a_resume_after_a_kill_continues_the_same_mlflow_run_without_duplicated_steps(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", tmp_path / "mlflow.db"
    first = build_loggers(both(store), run_dir, None, None)
    log_steps(first, range(1, 9))
    first.commit(8)  # checkpoints/last.pt holds step 8
    saved = first.state_dict()
    log_steps(first, range(9, 13))  # then a hard kill: these reach neither store for good
    first.backends["tensorboard"].close()  # ... TensorBoard had flushed them (purge drops them)
    del first  # MLflow: never committed, never closed
    # a resume is a later process: its event file's name (seconds, then a per-process counter)
    # sorts after the killed one's; in one process under xdist the counter could sort it first
    time.sleep(1.1)

    second = build_loggers(both(store), run_dir, 8, saved)
    assert second.state_dict() == saved
    log_steps(second, range(9, 17))
    second.commit(16)
    second.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [saved["mlflow"]["run_id"]]
    steps = mlflow_steps(store, saved["mlflow"]["run_id"])
    assert steps["charts/episodic_return"] == list(range(1, 17))  # unique, strictly increasing
    assert steps["eval/return_mean"] == [4, 8, 12, 16]
    tb = {tag: [s for s, _ in values] for tag, values in read_scalars(run_dir / "tb").items()}
    assert steps == tb


def test_what_was_logged_after_the_last_commit_never_reaches_mlflow(tmp_path):
    store = tmp_path / "mlflow.db"
    logger = build_loggers(both(store), tmp_path / "run", None, None)
    log_steps(logger, range(1, 7))
    logger.commit(4)  # steps 5 and 6 wait for the next checkpoint
    logger.close()  # a failed run: it ends there, or resumes from step 4
    run_id = logger.state_dict()["mlflow"]["run_id"]
    assert mlflow_steps(store, run_id)["charts/episodic_return"] == [1, 2, 3, 4]


def test_equal_points_at_one_step_are_all_kept_as_tensorboard_keeps_them(tmp_path):
    # two envs ending episodes of the same length at one step, in the same millisecond
    store = tmp_path / "mlflow.db"
    logger = build_loggers(both(store), tmp_path / "run", None, None)
    for step in (8, 8, 8, 16, 16):
        logger.scalar("charts/episodic_length", 42.0, step)
    logger.commit(16)
    logger.close()
    run_id = logger.state_dict()["mlflow"]["run_id"]
    assert sorted(mlflow_steps(store, run_id)["charts/episodic_length"]) == [8, 8, 8, 16, 16]


def test_a_resume_whose_mlflow_run_is_gone_logs_to_a_new_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rl_runner"):
        logger = build_loggers(both(tmp_path / "m.db"), tmp_path / "run", 8,
                               {"mlflow": {"run_id": "0123456789abcdef"}})
    logger.close()
    assert logger.state_dict()["mlflow"]["run_id"] != "0123456789abcdef"
    assert "run 0123456789abcdef is not in" in caplog.text


@pytest.mark.parametrize("where, message", [
    ("store", r"^cannot write .*/store: Is a directory$"),  # a folder where the file should be
    ("file/m.db", r"^cannot write .*/file: Not a directory$"),
    ("text.db", r"^mlflow store .*text\.db is not an SQLite database$"),
])
def test_an_unusable_store_is_one_line_at_once(tmp_path, where, message):
    (tmp_path / "store").mkdir()
    (tmp_path / "file").write_text("keep")
    (tmp_path / "text.db").write_text("keep")
    with pytest.raises(UserError, match=message):
        build_loggers(both(tmp_path / where), tmp_path / "run", None, None)


def test_an_unknown_tracking_uri_is_one_line(tmp_path):
    cfg = both(tmp_path / "m.db")
    cfg["mlflow"]["tracking_uri"] = "nosuch://host/x"
    with pytest.raises(UserError, match=r"^logger.mlflow.tracking_uri='nosuch://host/x' is not "
                                        r"a store rl-run writes to; allowed: [^\n]+$"):
        build_loggers(cfg, tmp_path / "run", None, None)
    cfg["mlflow"]["tracking_uri"] = "http://localhost:1"  # refused connections: at once
    with pytest.raises(UserError, match="cannot connect to localhost:1"):
        build_loggers(cfg, tmp_path / "run", None, None)
