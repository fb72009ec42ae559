"""The bundled Hydra configs: every env x algo pair composes, tuned presets apply, CLI help."""
from __future__ import annotations

import sys
from importlib import resources

import pytest
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf

from rl_runner import config as config_checks
from rl_runner.cli import group_choices
from rl_runner.errors import UserError
from tests.conftest import compose, run_cli

ENVS = {"cartpole": "CartPole-v1", "lunarlander": "LunarLander-v3",
        "lunarlander_continuous": "LunarLanderContinuous-v3", "pendulum": "Pendulum-v1",
        "acrobot": "Acrobot-v1", "gym": "MountainCar-v0"}
ALGOS = sorted(p.name[:-5] for p in (resources.files("rl_runner.conf") / "algo").iterdir()
               if p.name.endswith(".yaml"))
TUNED = sorted(p.name[:-5] for p in (resources.files("rl_runner.conf") / "tuned").iterdir()
               if p.name.endswith(".yaml"))
PROVIDED = {"observation_space", "action_space", "n_envs", "total_steps", "seed"}


def env_overrides(env: str) -> list[str]:
    return [f"env={env}"] + (["env.id=MountainCar-v0"] if env == "gym" else [])


def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_algo_group_is_not_empty():
    assert {"ppo", "pg"} <= set(ALGOS)


def test_env_group_holds_the_designed_envs():
    assert set(ENVS) <= set(group_choices("env"))


@pytest.mark.parametrize("env", sorted(ENVS))
@pytest.mark.parametrize("algo", ALGOS)
def test_every_pair_composes_and_fits_the_algorithm(algo, env):
    cfg = compose([f"algo={algo}", *env_overrides(env)])
    assert cfg.env.id == ENVS[env]
    assert cfg.env.name == env
    algo_yaml = OmegaConf.load(resources.files("rl_runner.conf") / "algo" / f"{algo}.yaml")
    assert cfg.algo._target_ == algo_yaml._target_
    cls = get_class(cfg.algo._target_)
    assert cls.name == algo
    # every algo.* key is a constructor hyperparameter of the right type and range
    kwargs = {k: config_checks.to_plain(v) for k, v in cfg.algo.items() if k != "_target_"}
    config_checks.check_algo_kwargs(algo, cls, kwargs, PROVIDED)
    config_checks.check_trainer(cfg)
    # the whole config resolves (no dangling interpolation outside the hydra node)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def preset_values(preset: str) -> dict[str, object]:
    """A tuned preset's values by key, the shared blocks its defaults list takes included
    (`learner/<name>@<package>`: tuned/learner/<name>.yaml under <package>; `<preset>`: another
    preset's values)."""
    tuned_dir = resources.files("rl_runner.conf") / "tuned"
    tuned = OmegaConf.to_container(OmegaConf.load(tuned_dir / f"{preset}.yaml"))
    values = {}
    for entry in tuned.pop("defaults", []):
        if entry == "_self_":
            continue
        if "@" not in entry:  # another preset, whole (a `# @package _global_` file)
            values.update(preset_values(entry))
            continue
        name, package = entry.split("@")
        shared = OmegaConf.to_container(OmegaConf.load(tuned_dir / f"{name}.yaml"))
        values.update(leaves(shared, f"{package}."))
    return {**values, **dict(leaves(tuned))}


@pytest.mark.parametrize("preset", TUNED)
def test_tuned_preset_values_win_over_group_defaults(preset):
    algo, env = preset.split("_", 1)
    cfg = compose([f"algo={algo}", f"env={env}"])
    values = preset_values(preset)
    assert values, f"{preset} is empty"
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, f"{preset}: {key}"


def test_ppo_cartpole_preset():
    cfg = compose(["algo=ppo", "env=cartpole"])
    assert cfg.algo.n_steps == 32
    assert cfg.env.n_envs == 8
    assert cfg.algo.batch_size == 256


def test_ppo_lunarlander_preset():
    cfg = compose(["algo=ppo", "env=lunarlander"])
    assert cfg.algo.n_steps == 1024
    assert cfg.env.n_envs == 16


@pytest.mark.parametrize("algo", ALGOS)
def test_pair_without_preset_keeps_algo_defaults(algo):
    # env=gym never has a preset: the composed algo node is the algo file as written
    assert f"{algo}_gym" not in TUNED
    cfg = compose([f"algo={algo}", "env=gym", "env.id=CartPole-v1"])
    algo_yaml = OmegaConf.load(resources.files("rl_runner.conf") / "algo" / f"{algo}.yaml")
    algo_yaml.pop("defaults", None)  # bc picks trainer/offline.yaml
    assert cfg.algo == algo_yaml
    trainer_yaml = OmegaConf.load(resources.files("rl_runner.conf") / "trainer" / "default.yaml")
    if algo == "bc":  # budgets in gradient steps
        trainer_yaml.merge_with({"total_steps": 10000, "eval_every": 2500})
    assert cfg.trainer == trainer_yaml


def test_command_line_beats_tuned_preset():
    cfg = compose(["algo=ppo", "env=cartpole", "algo.n_steps=16", "env.n_envs=2"])
    assert cfg.algo.n_steps == 16
    assert cfg.env.n_envs == 2


def test_default_composition_is_ppo_cartpole():
    cfg = compose([])
    assert cfg.algo._target_ == "rl_runner.algos.ppo.PPO"
    assert cfg.env.id == "CartPole-v1"
    assert cfg.seed == 0 and cfg.resume is None


def test_help_lists_the_groups(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    algo_line = next(ln for ln in lines if ln.startswith("algo:"))
    env_line = next(ln for ln in lines if ln.startswith("env:"))
    for name in ALGOS:
        assert name in algo_line
    for name in ENVS:
        assert name in env_line
    assert "rl-run" in proc.stdout


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli(["--cfg", "job", "algo=pg", "env=pendulum"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["algo"]["_target_"] == "rl_runner.algos.pg.PolicyGradient"
    assert printed["env"]["id"] == "Pendulum-v1"
    assert printed == OmegaConf.to_container(compose(["algo=pg", "env=pendulum"]))
    assert not (tmp_path / "outputs").exists()  # printing the config starts no run


def test_module_entry_point_finds_configs(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "rl_runner.cli", "--cfg", "job", "algo=pg"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "rl_runner.algos.pg.PolicyGradient" in proc.stdout


def test_keys_a_subclass_fixes_are_refused_and_left_out_of_the_allowed_list():
    class Base:
        def __init__(self, *, lr: float = 1.0, delay: int = 2):
            self.lr, self.delay = lr, delay

    class Child(Base):
        fixed_keys = ("delay",)

        def __init__(self, **kwargs):
            super().__init__(delay=1, **kwargs)

    config_checks.check_algo_kwargs("child", Child, {"lr": 0.5}, set())
    config_checks.check_algo_kwargs("base", Base, {"delay": 3}, set())
    with pytest.raises(UserError, match=r"^algo.delay is not a hyperparameter of child; "
                                        r"allowed: lr$"):
        config_checks.check_algo_kwargs("child", Child, {"delay": 3}, set())
