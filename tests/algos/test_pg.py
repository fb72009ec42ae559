"""REINFORCE with baseline: one step per rollout on reward-to-go - V; learning check (slow)."""
from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.base import gae
from rl_runner.algos.pg import PolicyGradient
from rl_runner.optim import FlatAdam
from tests.algos.helpers import (CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS, bandit_rollout,
                                 collect, params, prob_of_action_0)
from tests.conftest import compose


def cartpole_pg(**kw) -> PolicyGradient:
    args = dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2), n_envs=2,
                total_steps=10_000, seed=0, n_steps=32)
    return PolicyGradient(**{**args, **kw})


@pytest.mark.parametrize("value_steps", [0, 3])
def test_one_policy_step_per_rollout_plus_value_steps(value_steps):
    algo = cartpole_pg(value_steps=value_steps)
    batch = collect(algo, "CartPole-v1", 2)
    before = params(algo)
    metrics = algo.update(batch)
    assert algo.grad_steps == 1 + value_steps
    for key in ("policy_loss", "value_loss", "entropy", "learning_rate"):
        assert math.isfinite(metrics[key]), key
    assert metrics["entropy"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, params(algo)))


def test_value_loss_is_against_the_discounted_reward_to_go():
    """With lr=0 nothing moves, so the reported value loss is exactly mean((V - G)^2) where G
    is gae(lam=1)'s return: the discounted reward-to-go."""
    algo = cartpole_pg(lr=0.0, gamma=0.9)
    batch = collect(algo, "CartPole-v1", 2)
    metrics = algo.update(batch)
    _, ret = gae(batch.rewards, batch.values, batch.next_values,
                 batch.dones.astype(np.float32), 0.9, 1.0)
    expected = float(((batch.values - ret) ** 2).mean())
    assert metrics["value_loss"] == pytest.approx(expected, rel=1e-4)


def test_update_raises_the_probability_of_the_better_action():
    algo = cartpole_pg(lr=1e-2)
    p0 = prob_of_action_0(algo)
    for _ in range(5):
        algo.update(bandit_rollout(algo))
    assert prob_of_action_0(algo) > p0 + 0.05


def test_box_actions():
    algo = PolicyGradient(observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT, n_envs=2,
                          total_steps=10_000, seed=0, n_steps=32, log_std_init=1.0)
    batch = collect(algo, "Pendulum-v1", 2)
    assert np.abs(batch.actions).max() > 2.0  # raw samples are stored, not the clipped ones
    before = algo.net.log_std.detach().clone()
    metrics = algo.update(batch)
    assert math.isfinite(metrics["policy_loss"])
    assert not torch.equal(before, algo.net.log_std.detach())


@pytest.mark.parametrize("space", ["discrete", "box"])
def test_update_matches_a_torch_autograd_reference(space):
    """The numpy gradient path gives the parameters that autograd on the same losses gives."""
    if space == "discrete":
        algo, env_id = cartpole_pg(value_steps=2, ent_coef=0.05, lr=3e-3), "CartPole-v1"
    else:
        algo = PolicyGradient(observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT, n_envs=2,
                              total_steps=10_000, seed=0, n_steps=32, value_steps=2,
                              ent_coef=0.05, lr=3e-3)
        env_id = "Pendulum-v1"
    batch = collect(algo, env_id, 2)
    net = copy.deepcopy(algo.net)
    opt = FlatAdam(net.parameters(), lr=algo.lr, eps=1e-5)
    adv, ret = algo.advantages(batch, 1.0)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x).reshape(adv.size, *x.shape[2:]))  # noqa: E731
    obs, act, adv, ret = t(batch.obs), t(batch.actions), t(adv), t(ret.astype(np.float32))
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)

    def step(loss):
        opt.zero_grad()
        loss.backward()
        opt.clip_grad_norm(algo.max_grad_norm)
        opt.step()

    out, v = net(obs)
    logp, entropy = net.dist.log_prob_entropy(out, net.log_std, act)
    step(-(logp * adv).mean() - algo.ent_coef * entropy.mean()
         + algo.vf_coef * ((v - ret) ** 2).mean())
    for _ in range(algo.value_steps):
        step(algo.vf_coef * ((net(obs)[1] - ret) ** 2).mean())
    algo.update(batch)
    for mine, ref in zip(params(algo), net.parameters()):
        torch.testing.assert_close(mine, ref.detach(), rtol=1e-4, atol=2e-6)


@pytest.mark.slow
def test_pg_learns_cartpole(tmp_path):
    from rl_runner.trainer import train

    cfg = compose(["algo=pg", "env=cartpole", "seed=0", "trainer.progress=false",
                   "trainer.total_steps=500000"])
    res = train(cfg, tmp_path / "run")
    assert res["env_steps"] <= 500_000
    assert res["best_eval_return_mean"] >= 450, res
