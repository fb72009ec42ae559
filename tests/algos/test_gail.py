"""GAIL: discriminator inputs and loss terms by hand, the learner paid -log D, runs and learning."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.gail import GAIL
from rl_runner.datasets import Dataset
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.algos.helpers import PENDULUM_ACT, PENDULUM_OBS, collect
from tests.conftest import FAST, compose, read_scalars

CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
SMALL_PPO = {"n_steps": 16, "batch_size": 32, "n_epochs": 2}


def make_gail(action_space=gym.spaces.Discrete(2), obs_space=CARTPOLE_OBS, **kw) -> GAIL:
    torch.manual_seed(0)
    args = dict(observation_space=obs_space, action_space=action_space, n_envs=2,
                total_steps=1000, seed=0, learner_kwargs=SMALL_PPO, disc_batch_size=32)
    return GAIL(**{**args, **kw})


def expert_data(obs: np.ndarray, actions: np.ndarray) -> Dataset:
    n = len(obs)
    return Dataset(observations=obs.astype(np.float32), actions=actions,
                   rewards=np.zeros(n, np.float32), next_observations=obs.astype(np.float32),
                   terminations=np.zeros(n, bool), truncations=np.zeros(n, bool),
                   episode_starts=np.eye(1, n, dtype=bool)[0], metadata={})


def test_inputs_scale_observations_by_the_expert_and_encode_actions():
    gail = make_gail(gym.spaces.Discrete(3, start=1))
    obs = np.array([[0, 0, 0, 0], [2, 4, 0, 0]], np.float32)
    gail.fit_dataset(expert_data(obs, np.array([1, 3])))  # the env's own action numbers
    np.testing.assert_allclose(gail.obs_mean, [1, 2, 0, 0])
    np.testing.assert_allclose(gail.expert[:, 4:], [[1, 0, 0], [0, 0, 1]])
    # the learners act from 0, whatever the space's start
    x = gail.inputs(np.array([[1, 2, 0, 0], [3, 6, 0, 0]], np.float32), np.array([1, 2]))
    # (obs - mean) / std with std (1, 2, tiny): zero-variance features stay 0, then one-hot
    np.testing.assert_allclose(x, [[0, 0, 0, 0, 0, 1, 0], [2, 2, 0, 0, 0, 0, 1]])
    box = make_gail(PENDULUM_ACT, PENDULUM_OBS)
    box.fit_dataset(expert_data(np.zeros((2, 3)), np.zeros((2, 1), np.float32)))
    x = box.inputs(np.zeros((3, 3), np.float32), np.array([[-2.0], [1.0], [5.0]], np.float32))
    np.testing.assert_allclose(x[:, -1], [-1.0, 0.5, 1.0])  # [-2, 2] -> [-1, 1], clipped


def test_reward_is_minus_log_d_and_the_loss_is_the_two_cross_entropies():
    gail = make_gail(disc_steps=1)
    rng = np.random.default_rng(0)
    gail.fit_dataset(expert_data(rng.normal(size=(32, 4)), rng.integers(0, 2, 32)))
    x = gail.expert[:4]
    with torch.no_grad():
        d = torch.sigmoid(gail.logits(x)).numpy()
    np.testing.assert_allclose(gail.rewards(x), -np.log(d), rtol=1e-5)
    gail.reward = "airl"
    np.testing.assert_allclose(gail.rewards(x), np.log(1 - d) - np.log(d), rtol=1e-4, atol=1e-6)
    gail.reward = "gail"
    learner_x = gail.inputs(rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, 32))
    with torch.no_grad():
        l_d = torch.sigmoid(gail.logits(learner_x)).numpy()
        e_d = torch.sigmoid(gail.logits(gail.expert)).numpy()
    draw = np.random.default_rng(1)  # disc_step draws learner rows, then expert rows
    idx_l, idx_e = draw.integers(0, 32, 32), draw.integers(0, 32, 32)
    gail.rng = np.random.default_rng(1)
    expected = -np.log(l_d[idx_l]).mean() - np.log(1 - e_d[idx_e]).mean()
    stats = gail.disc_step(learner_x)
    assert stats["disc_loss"] == pytest.approx(expected, rel=1e-5)
    assert stats["charts/disc_learner_acc"] == pytest.approx((l_d[idx_l] > 0.5).mean())
    assert stats["charts/disc_expert_acc"] == pytest.approx((e_d[idx_e] < 0.5).mean())


def test_discriminator_separates_and_gradient_penalty_is_positive():
    gail = make_gail(disc_lr=1e-2, grad_penalty=1.0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(256, 4)).astype(np.float32)
    gail.fit_dataset(expert_data(obs, np.zeros(256, np.int64)))  # the expert always pushes left
    learner_x = gail.inputs(obs, np.ones(256, np.int64))  # the learner always right
    for _ in range(100):
        stats = gail.disc_step(learner_x)
    assert stats["charts/disc_learner_acc"] > 0.95 and stats["charts/disc_expert_acc"] > 0.95
    assert stats["disc_grad_penalty"] > 0
    assert gail.rewards(gail.expert[:8]).mean() > gail.rewards(learner_x[:8]).mean()


def test_the_learner_is_paid_minus_log_d_not_the_env_reward():
    gail = make_gail(disc_steps=2)
    rng = np.random.default_rng(0)
    gail.fit_dataset(expert_data(rng.normal(size=(64, 4)), rng.integers(0, 2, 64)))
    batch = collect(gail, "CartPole-v1", n_envs=2)
    seen = {}
    update = gail.learner.update

    def spy(b):
        seen["rewards"] = b.rewards.copy()
        return update(b)

    gail.learner.update = spy
    raw = np.stack(gail._raw_obs)
    metrics = gail.update(batch)
    expected = gail.rewards(gail.inputs(raw.reshape(32, 4), batch.actions.reshape(32)))
    np.testing.assert_allclose(seen["rewards"].reshape(-1), expected, rtol=1e-6)
    assert not np.allclose(seen["rewards"], 1.0)  # CartPole's own reward is 1 every step
    assert {"disc_loss", "charts/disc_expert_acc", "gail_reward"} <= set(metrics)
    assert gail._raw_obs == []


def test_bad_learner_settings_are_user_errors():
    with pytest.raises(UserError, match="algo.learner='sac'"):
        make_gail(learner="sac")
    with pytest.raises(UserError,
                       match="algo.learner_kwargs.n_stepz is not a hyperparameter of ppo"):
        make_gail(learner_kwargs={"n_stepz": 8})
    with pytest.raises(UserError, match="algo.reward='wgan' is not known; allowed: gail, airl"):
        make_gail(reward="wgan")
    with pytest.raises(UserError, match="gail rescales actions into the env's bounds"):
        make_gail(gym.spaces.Box(-np.inf, np.inf, (1,), np.float32), PENDULUM_OBS)


def test_gail_through_the_trainer_logs_the_discriminator_and_the_true_return(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(compose(["algo=gail", "env=cartpole", *FAST, "dataset.expert_episodes=1",
                   "trainer.total_steps=1024", "trainer.eval_every=512"]), run)
    scalars = read_scalars(run / "tb")
    assert {"losses/disc_loss", "charts/disc_expert_acc", "charts/disc_learner_acc",
            "charts/episodic_return", "losses/policy_loss", "eval/return_mean"} <= set(scalars)
    # the logged return is the env's: CartPole pays 1 per step, so return == length
    returns = [v for _, v in scalars["charts/episodic_return"]]
    lengths = [v for _, v in scalars["charts/episodic_length"]]
    assert returns == lengths


@pytest.mark.slow
def test_gail_learns_cartpole_from_the_bundled_expert(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = train(compose(["algo=gail", "env=cartpole", "trainer.progress=false",
                         "trainer.total_steps=51200", "trainer.eval_every=25600"]),
                tmp_path / "run")
    assert res["eval_return_mean"] >= 475
    assert not math.isnan(res["best_eval_return_mean"])


def test_bc_init_clones_the_expert_into_the_learner_before_any_rollout():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(512, 4)).astype(np.float32)
    actions = (obs[:, 2] > 0).astype(np.int64)  # a threshold rule on one feature
    plain, cloned = make_gail(), make_gail(bc_init_steps=300)
    for gail in (plain, cloned):
        gail.fit_dataset(expert_data(obs, actions))
    agree = {name: float((g.act(obs, deterministic=True) == actions).mean())
             for name, g in (("plain", plain), ("cloned", cloned))}
    assert agree["cloned"] > 0.95 > agree["plain"]
    assert cloned.bc_loss < 0.3 and plain.bc_loss is None
    with pytest.raises(UserError, match="algo.bc_init_steps=-1"):
        make_gail(bc_init_steps=-1)
    with pytest.raises(UserError, match="algo.bc_init_steps=10 works with algo.learner=ppo"):
        make_gail(bc_init_steps=10, learner="trpo", learner_kwargs={})
