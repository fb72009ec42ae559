"""TensorBoard's HPARAMS tab shows every algorithm's columns when a sweep mixes algorithms: the
plugin takes one run's experiment summary, so every run declares the keys of all of them."""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from rl_runner.config import group_choices
from rl_runner.tb_hparams import bundled_keys
from tests.conftest import run_cli


def hparams_records(tb_dir: Path) -> tuple[set[str], dict[str, object]]:
    """(the hyperparameter names the experiment declares, the session's own values)."""
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    start = HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
              for k, v in start.session_start_info.hparams.items()}
    return {h.name for h in experiment.hparam_infos}, values


def test_every_run_of_a_mixed_sweep_declares_both_algorithms_keys(tmp_path):
    # ppo and pg with the same rollout (32 steps x 8 envs), one update each
    proc = run_cli(["-m", "algo=ppo,pg", "env=cartpole", "algo.n_steps=32",
                    "trainer.total_steps=256", "trainer.eval_episodes=1", "trainer.progress=false"],
                   tmp_path, timeout=300)  # the sweep lands in tmp_path/outputs/multirun/
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/*/tb"))
    assert [j.name.split("_")[1] for j in jobs] == ["ppo", "pg"]
    for job in jobs:
        declared, values = hparams_records(job / "tb")
        # a ppo-only key and pg-only key, in both runs' experiment
        assert {"algo.clip_coef", "algo.value_steps", "algo.lr", "seed"} <= declared, job
        # every bundled algorithm's keys
        assert {k for k in bundled_keys() if k.startswith("algo.")} <= declared
        # the session holds the run's own values only
        algo = job.name.split("_")[1]
        assert ("algo.clip_coef" in values) == (algo == "ppo")
        assert ("algo.value_steps" in values) == (algo == "pg")
        assert values["algo.n_steps"] == 32


def test_bundled_keys_cover_every_algo_config():
    keys = bundled_keys()
    assert len(group_choices("algo")) >= 7
    for key in ("algo.clip_coef", "algo.value_steps", "algo.value_epochs", "algo.tau",
                "algo.cql_weight", "algo.lr", "env.id"):
        assert key in keys, key
