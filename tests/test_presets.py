"""Every tuned preset (conf/tuned/<algo>_<env>.yaml) composes and trains for about two updates.

The preset's hyperparameters are kept; only the budget, the evaluation and the sizes of what a
run fills before it learns (replay buffer, learning_starts, expert episodes, gail's warm start)
shrink, so that a preset that cannot start (a missing expert, a key its algorithm refuses) fails
here in seconds.
"""
from __future__ import annotations

from importlib import resources

import pytest
from omegaconf import DictConfig

from rl_runner.trainer import train
from tests.conftest import compose, read_results

PRESETS = sorted(p.name[:-5] for p in (resources.files("rl_runner.conf") / "tuned").iterdir()
                 if p.name.endswith(".yaml"))
# bc's presets, folded into trainer/offline.yaml (which algo/bc.yaml picks): its envs with an expert
FOLDED = ["bc_cartpole", "bc_lunarlander", "bc_lunarlander_continuous", "bc_pendulum"]
OFFLINE = {"bc", "cql"}  # budgets count gradient steps
OFF_POLICY = {"sac", "dqn", "td3", "ddpg"}
DEMONSTRATIONS = {"bc", "cql", "gail"}


def two_updates(algo: str, cfg: DictConfig) -> list[str]:
    """Overrides that end the preset's run after about two updates."""
    if algo in OFFLINE:
        steps, shrink = 2, []
    elif algo in OFF_POLICY:  # updates start once a batch is stored, every train_freq steps
        starts = cfg.algo.batch_size
        steps = starts + 2 * cfg.algo.train_freq * cfg.env.n_envs
        shrink = [f"algo.learning_starts={starts}", f"algo.buffer_size={steps}"]
    else:  # on-policy: two rollouts
        learner = cfg.algo.learner_kwargs if algo == "gail" else cfg.algo
        steps, shrink = 2 * learner.n_steps * cfg.env.n_envs, []
        if algo == "gail" and cfg.algo.bc_init_steps:
            shrink.append("algo.bc_init_steps=2")
    if algo in DEMONSTRATIONS:
        shrink.append("dataset.expert_episodes=1")
    return [f"trainer.total_steps={steps}", f"trainer.eval_every={steps}", *shrink]


@pytest.fixture(scope="module")
def expert_cache(tmp_path_factory):
    """One expert episode per env, collected once for this module, outside the user's cache."""
    return tmp_path_factory.mktemp("cache")


def test_every_algo_of_a_preset_is_known():
    assert PRESETS and "bc_acrobot" not in PRESETS  # no acrobot expert: bc could not start
    algos = {p.split("_", 1)[0] for p in PRESETS}
    assert algos <= OFFLINE | OFF_POLICY | {"pg", "ppo", "trpo", "a2c", "gail"}, algos


@pytest.mark.parametrize("preset", PRESETS + FOLDED)
def test_preset_trains_two_updates(preset, expert_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(expert_cache))
    algo, env = preset.split("_", 1)
    base = [f"algo={algo}", f"env={env}", "trainer.progress=false", "trainer.eval_episodes=1",
            "trainer.torch_threads=1"]
    if env == "atari":  # env=atari names no game of its own
        base.append("env.id=BreakoutNoFrameskip-v4")
    cfg = compose([*base, *two_updates(algo, compose(base))])
    results = train(cfg, tmp_path / "run")
    assert results["status"] == "completed", results
    assert read_results(tmp_path / "run")["status"] == "completed"
    assert results["grad_steps"] >= 2
