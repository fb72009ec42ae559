"""Renamed hyperparameters: saved configs under the old names still load and resume, and the old
name on the command line says what it is called now."""
from __future__ import annotations

import copy
import shutil

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from rl_runner import rl_eval
from rl_runner.checkpoint import load_checkpoint, save_checkpoint
from rl_runner.errors import UserError
from rl_runner.experts import expert_path
from rl_runner.overrides import check_overrides
from rl_runner.policy import load_policy
from rl_runner.renames import GAIL_LEARNERS, RENAMED, renamed_to, upgrade_config
from tests.conftest import read_results, run_cli

PPO = "rl_runner.algos.ppo.PPO"


def test_old_keys_take_their_new_names_in_place():
    old = {"seed": 0, "algo": {"_target_": PPO, "lr": 1e-3, "target_kl": 0.02,
                               "kl_target": 0.01, "kl_beta": 1.0}}
    kept = copy.deepcopy(old)
    new = upgrade_config(old)
    assert list(new["algo"]) == ["_target_", "lr", "kl_early_stop", "kl_penalty_target",
                                 "kl_beta"]
    assert new["algo"]["kl_early_stop"] == 0.02 and new["seed"] == 0
    assert old == kept  # the caller's dict is left as it was
    assert upgrade_config(new) == new


@pytest.mark.parametrize("target, old, new", [
    ("rl_runner.algos.trpo.TRPO", "target_kl", "max_kl"),
    ("rl_runner.algos.pg.PolicyGradient", "value_epochs", "value_steps")])
def test_each_algorithm_has_its_own_renames(target, old, new):
    assert upgrade_config({"algo": {"_target_": target, old: 1}})["algo"] == {
        "_target_": target, new: 1}
    # trpo keeps value_epochs; another algorithm's names are not touched
    assert upgrade_config({"algo": {"_target_": "rl_runner.algos.trpo.TRPO",
                                    "value_epochs": 3}})["algo"]["value_epochs"] == 3
    assert upgrade_config({"algo": {"_target_": "my.Algo", old: 1}})["algo"] == {
        "_target_": "my.Algo", old: 1}


@pytest.mark.parametrize("target", ["rl_runner.algos.td3.TD3", "rl_runner.algos.td3.DDPG"])
def test_a_td3_config_from_before_algo_precision_keeps_float32(target):
    """Such runs computed in float32; auto would now take bf16 on a CPU with bfloat16 units,
    and their resume would not be the uninterrupted run."""
    old = {"algo": {"_target_": target, "lr": 1e-3}}
    assert upgrade_config(old)["algo"] == {"_target_": target, "lr": 1e-3, "precision": "fp32"}
    assert "precision" not in old["algo"]  # the caller's dict is left as it was
    for value in ("auto", "bf16"):  # a config that has the key keeps it
        new = {"algo": {"_target_": target, "precision": value}}
        assert upgrade_config(new)["algo"]["precision"] == value
    assert "precision" not in upgrade_config({"algo": {"_target_": PPO}})["algo"]


def test_gail_learner_kwargs_are_renamed_for_its_learner():
    gail = {"_target_": "rl_runner.algos.gail.GAIL", "learner": "trpo",
            "learner_kwargs": {"target_kl": 0.005, "n_steps": 64}}
    assert upgrade_config({"algo": gail})["algo"]["learner_kwargs"] == {"max_kl": 0.005,
                                                                         "n_steps": 64}
    del gail["learner"]  # gail's default learner is ppo
    assert upgrade_config({"algo": gail})["algo"]["learner_kwargs"] == {"kl_early_stop": 0.005,
                                                                         "n_steps": 64}


def test_both_names_or_no_config_are_left_for_the_reader_to_refuse():
    both = {"algo": {"_target_": PPO, "target_kl": 0.1, "kl_early_stop": 0.2}}
    assert upgrade_config(both) == both
    for not_a_config in (None, [], {"algo": None}):
        assert upgrade_config(not_a_config) == not_a_config


def test_the_table_names_real_parameters():
    from hydra.utils import get_class

    from rl_runner.algos.gail import LEARNERS
    from rl_runner.overrides import algo_params

    assert GAIL_LEARNERS == LEARNERS
    for target, table in RENAMED.items():
        params = algo_params(get_class(target))
        assert set(table.values()) <= set(params) and not set(table) & set(params), target
    assert renamed_to("target_kl", algo_params(get_class(PPO))) == "kl_early_stop"
    assert renamed_to("target_kl", ["lr"]) is None


def test_bundled_experts_hold_old_names_and_load():
    path = expert_path("pendulum")
    assert "target_kl" in load_checkpoint(path)["config"]["algo"]  # written before the rename
    policy = load_policy(path.parent, str(path))
    assert policy.config.algo.kl_early_stop == 0.02 and "target_kl" not in policy.config.algo


@pytest.mark.parametrize("algo, old, new", [("ppo", "target_kl", "kl_early_stop"),
                                            ("ppo", "kl_target", "kl_penalty_target"),
                                            ("trpo", "target_kl", "max_kl"),
                                            ("pg", "value_epochs", "value_steps")])
def test_an_old_name_on_the_command_line_says_the_new_one(algo, old, new):
    argv = [f"algo={algo}", f"algo.{old}=0.02"]
    with pytest.raises(UserError) as e:
        check_overrides(OverridesParser.create().parse_overrides(argv), argv, False)
    assert str(e.value) == f"algo.{old} was renamed to algo.{new}"


def with_old_names(config: dict) -> dict:
    algo = {{"kl_early_stop": "target_kl", "kl_penalty_target": "kl_target"}.get(k, k): v
            for k, v in config["algo"].items()}
    return {**config, "algo": algo}


def test_a_run_saved_with_old_names_resumes_twice(finished_run, tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        save_checkpoint(run / "checkpoints" / name, {**state,
                                                     "config": with_old_names(state["config"])})
    saved = run / ".hydra" / "config.yaml"
    saved.write_text(yaml.safe_dump(with_old_names(yaml.safe_load(saved.read_text())),
                                    sort_keys=False))
    assert "target_kl" in load_checkpoint(run / "checkpoints" / "last.pt")["config"]["algo"]
    rl_eval.main([f"run={run}", "episodes=1"])
    assert "return" in capsys.readouterr().out
    # the first resume writes last.pt under the new names beside the old .hydra/config.yaml
    for steps in (768, 1024):
        proc = run_cli([f"resume={run}", f"trainer.total_steps={steps}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert read_results(run)["env_steps"] == steps
    assert "kl_early_stop" in load_checkpoint(run / "checkpoints" / "last.pt")["config"]["algo"]


def test_an_old_discrete_cql_config_drops_the_box_keys_it_held_at_their_defaults():
    import gymnasium as gym
    import numpy as np
    from omegaconf import OmegaConf

    from rl_runner.algos.build import build_algo
    from tests.conftest import compose

    cfg = OmegaConf.to_container(compose(["algo=cql", "env=cartpole"]), resolve=True)
    old_box_keys = {"n_action_samples": 4, "actor_lr": 1e-4, "backup_entropy": False,
                    "ent_coef": None}  # what cql.yaml set before DiscreteCQL split off
    old = {**cfg, "algo": {**cfg["algo"], **old_box_keys}}
    spaces = (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))
    with pytest.raises(UserError, match="algo.n_action_samples is not a hyperparameter"):
        build_algo(OmegaConf.create(old), *spaces)
    algo = build_algo(OmegaConf.create(upgrade_config(old)), *spaces)
    assert type(algo).__name__ == "DiscreteCQL"
    changed = {**old, "algo": {**old["algo"], "n_action_samples": 8}}  # not the default: kept
    assert upgrade_config(changed)["algo"]["n_action_samples"] == 8
