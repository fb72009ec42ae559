"""First contact: the CLI mistakes of a new user get exit 2, at most two lines saying what to type
instead, and no run directory (issue 19, point 9). Each calls rl-run's main() in this process, in a
fresh folder (conftest.refused_in_process); the last test runs the real rl-run."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rl_runner.overrides import close_match
from tests.conftest import RL_RUN, cli_env


def rl_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """rl-run ARGS with cwd tmp_path and Hydra's default output folders (outputs/ under it)."""
    return subprocess.run([str(RL_RUN), *args, "trainer.progress=false"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture
def refused(refused_in_process, tmp_path):
    """Exit 2, at most two stderr lines, no traceback, nothing under outputs/: the message."""
    def run(*args: str) -> str:
        message = refused_in_process([*args, "trainer.progress=false"], max_lines=2)
        assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))
        return message

    return run


def test_a_sweep_without_m_says_add_m(refused):
    message = refused("algo=ppo,pg", "env=cartpole")
    assert "algo=ppo,pg is a sweep over several values; add -m to run each: " \
           "rl-run -m algo=ppo,pg env=cartpole" in message


@pytest.mark.parametrize("override", ["seed=0,1,2", "algo.lr=1e-3,3e-4", "env.n_envs=4,8",
                                      "trainer.eval_episodes=range(1,3)",
                                      "algo.hidden_sizes=[64,64],[32,32]"])
def test_any_key_swept_without_m_says_add_m(refused, override):
    message = refused(override)
    assert f"{override} is a sweep over several values; add -m" in message
    assert "rl-run -m " in message


def test_a_list_without_brackets_says_how_to_write_the_list(refused):
    message = refused("algo.hidden_sizes=128,128")
    assert "algo.hidden_sizes takes a list: algo.hidden_sizes=[128,128]" in message


def test_a_list_without_brackets_in_a_sweep_says_so_too(refused):
    message = refused("-m", "algo=sac", "algo.hidden_sizes=128,128")
    assert "algo.hidden_sizes takes a list: algo.hidden_sizes=[128,128]" in message
    assert "a sweep over lists: -m algo.hidden_sizes=[64,64],[128,128]" in message  # tuned


def test_an_unknown_algo_key_names_the_close_one_and_the_allowed(refused):
    message = refused("algo.learning_rate=1e-3")
    assert "algo.learning_rate is not a hyperparameter of ppo; did you mean algo.lr? " \
           "allowed: " in message
    assert "clip_coef" in message and "gae_lambda" in message
    assert "To append" not in message  # not Hydra's advice to add +


def test_an_unknown_algo_key_with_plus_gets_the_same_answer(refused):
    message = refused("+algo.learning_rate=1e-3")
    assert "algo.learning_rate is not a hyperparameter of ppo; did you mean algo.lr?" in message


@pytest.mark.parametrize("args, expected", [
    (["algo=pg", "algo.n_step=64"],
     "algo.n_step is not a hyperparameter of pg (dqn has it); did you mean algo.n_steps? "
     "allowed: "),
    (["algo=sac", "algo.polyak=0.01"],
     "algo.polyak is not a hyperparameter of sac; did you mean algo.tau? allowed: "),
    (["trainer.total_step=5"],
     "trainer.total_step is not a key of trainer; did you mean trainer.total_steps? allowed: "),
    (["env.num_envs=4"], "env.num_envs is not a key of env; did you mean env.n_envs? allowed: "),
    (["sed=3"], "sed is not a config key; did you mean seed? allowed: "),
    (["lr=1e-3"], "lr is not a config key; did you mean algo.lr? allowed: "),
    (["algo.total_steps=100"], "did you mean trainer.total_steps?"),
    (["trainer.seed=1"], "did you mean seed?"),
    (["algo=pg", "algo.clip_coef=0.1"], "algo.clip_coef is not a hyperparameter of pg (ppo has it)"),
    (["dataset.pth=x.npz"], "dataset.pth is not a key of dataset; did you mean dataset.path?"),
])
def test_unknown_keys_anywhere(refused, args, expected):
    assert expected in refused(*args)


def test_a_free_form_node_says_to_add_the_key(refused):
    message = refused("env=lunarlander", "env.kwargs.gravity=-9.0")
    assert "+env.kwargs.gravity=-9.0" in message


def test_plus_on_a_key_that_exists_says_drop_the_plus(refused):
    assert "seed is already in the config; set it without +: seed=3" in refused("+seed=3")


def test_a_sweep_checks_every_algorithm_it_names(refused):
    message = refused("-m", "algo=ppo,pg", "algo.clip_coef=0.1")
    assert "algo.clip_coef is not a hyperparameter of pg" in message


@pytest.mark.parametrize("args, expected", [
    (["trainer.total_steps=-5"], "trainer.total_steps=-5 must be positive"),
    (["algo.gamma=2"], "algo.gamma=2 must lie in [0, 1]"),
    (["trainer.torch_threads=zero"], "trainer.torch_threads='zero' is not allowed; expected positive int | auto"),
    (["algo.lr=fast"], "algo.lr='fast' has the wrong type"),
    # as an override spells them (it said 'expected bool | auto', and lr=None)
    (["env.envpool_async=yes"], "env.envpool_async='yes' is not allowed; expected true | false "
                                "| auto"),
    (["algo.lr=null"], "algo.lr=null has the wrong type"),
    (["algo=sac", "algo.activation=tanhh"], "algo.activation='tanhh' is not known"),
    (["algo=ppo", "algo.batch_size=100000"], "algo.batch_size=100000 is larger than the rollout"),
    (["env.id=CartPole-v9"], "env.id='CartPole-v9' is not a registered gymnasium environment"),
    (["env=gym"], "env=gym needs env.id="),
    (["-m", "seed=0,1", "trainer.total_steps=0"], "trainer.total_steps=0 must be positive"),
])
def test_bad_values_are_refused_before_any_run_directory(refused, args, expected):
    assert expected in refused(*args)


def test_close_match():
    assert close_match("learning_rate", ["gamma", "lr"]) == "lr"
    assert close_match("gl", ["gae_lambda", "gamma"]) == "gae_lambda"
    assert close_match("Total-Steps", ["total_steps"]) == "total_steps"
    assert close_match("ent_coeff", ["ent_coef", "vf_coef"]) == "ent_coef"
    assert close_match("zzz", ["lr"]) is None


def test_help_still_works_and_a_good_run_still_runs(tmp_path):
    proc = rl_run(tmp_path, "--help")
    assert proc.returncode == 0 and "rl-run" in proc.stdout
    proc = rl_run(tmp_path, "algo=pg", "env=cartpole", "trainer.total_steps=64", "algo.n_steps=8",
                  "trainer.eval_episodes=1", "algo.hidden_sizes=[16]",
                  "+env.kwargs.sutton_barto_reward=true",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize("overrides, error", [
    (["algo.lr=-1,0.001"], None),  # one job fails: the sweep records it and goes on
    (["algo.lr=-1,-2"], "algo.lr=-1 must not be negative"),  # every job would fail
    (["seed=0,1", "trainer.total_steps=0"], "trainer.total_steps=0 must be positive"),
    # each job's own config is checked, not the config without the swept keys (rollout 256)
    (["algo.n_steps=64,128", "algo.batch_size=512"], None),
    (["algo=ppo,sac", "algo.lr=-1"], "algo.lr=-1 must not be negative"),
])
def test_a_sweep_is_refused_only_when_every_job_would_fail(overrides, error):
    from hydra import initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rl_runner.errors import UserError
    from rl_runner.overrides import check_jobs

    parsed = OverridesParser.create().parse_overrides(overrides)
    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        if error is None:
            check_jobs(parsed, overrides)
        else:
            with pytest.raises(UserError, match=error.replace("[", r"\[")):
                check_jobs(parsed, overrides)
