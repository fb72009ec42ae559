"""GAE and the on-policy base: hand-computed values, the lam=1 reward-to-go identity, state."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.base import explained_variance, gae
from rl_runner.algos.ppo import PPO


def test_gae_by_hand():
    """Column 0: step 1 terminates (next value 0). Column 1: step 1 is truncated and bootstraps
    from V(final obs) = 5. Both columns are cut by the rollout end at step 2 (bootstrap V)."""
    gamma, lam = 0.9, 0.8
    rewards = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], np.float32)
    values = np.array([[0.5, 1.0], [1.0, 2.0], [1.5, 3.0]], np.float32)
    next_values = np.array([[1.0, 2.0], [0.0, 5.0], [2.0, 4.0]], np.float32)
    dones = np.array([[0, 0], [1, 1], [0, 0]], np.float32)
    adv, ret = gae(rewards, values, next_values, dones, gamma, lam)
    # deltas: col 0: 1+.9*1-.5=1.4, 2+0-1=1.0, 3+.9*2-1.5=3.3
    #         col 1: 1+.9*2-1=1.8, 1+.9*5-2=3.5, 1+.9*4-3=1.6
    # A_t = delta_t + gamma*lam*(1-done_t)*A_{t+1}
    expected_adv = np.array([[1.4 + 0.72 * 1.0, 1.8 + 0.72 * 3.5],
                             [1.0, 3.5],
                             [3.3, 1.6]])
    np.testing.assert_allclose(adv, expected_adv, rtol=1e-6)
    np.testing.assert_allclose(ret, expected_adv + values, rtol=1e-6)


def test_gae_lambda_zero_is_the_td_error():
    rng = np.random.default_rng(0)
    r, v, nv = (rng.normal(size=(6, 3)).astype(np.float32) for _ in range(3))
    dones = (rng.random((6, 3)) < 0.3).astype(np.float32)
    adv, _ = gae(r, v, nv, dones, 0.97, 0.0)
    np.testing.assert_allclose(adv, r + 0.97 * nv - v, rtol=1e-5, atol=1e-6)


def reward_to_go(rewards, next_values, dones, gamma):
    """Discounted return, restarting where an episode ended; bootstraps with next_values where
    the episode ended (0 when terminated, V(final obs) when truncated) and at the rollout end."""
    T = len(rewards)
    out = np.zeros_like(rewards, dtype=np.float64)
    for t in reversed(range(T)):
        follow = next_values[t] if (dones[t] or t == T - 1) else out[t + 1]
        out[t] = rewards[t] + gamma * follow
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_lambda_one_is_the_discounted_reward_to_go(seed):
    rng = np.random.default_rng(seed)
    T, N, gamma = 12, 4, 0.95
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = rng.random((T, N)) < 0.25
    truncated = dones & (rng.random((T, N)) < 0.5)
    # as the collector builds them: V(s_{t+1}) while the episode goes on, 0 at termination,
    # V(final obs) at truncation, V(obs after the rollout) at the end
    next_values = np.empty_like(values)
    next_values[:-1] = values[1:]
    next_values[-1] = rng.normal(size=N)
    next_values[dones] = 0.0
    next_values[truncated] = rng.normal(size=int(truncated.sum()))
    _, ret = gae(rewards, values, next_values, dones.astype(np.float32), gamma, 1.0)
    for n in range(N):
        expected = reward_to_go(rewards[:, n], next_values[:, n], dones[:, n], gamma)
        np.testing.assert_allclose(ret[:, n], expected, rtol=1e-4, atol=1e-4)


def test_explained_variance():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(np.full(4, target.mean()), target) == pytest.approx(0.0)
    assert np.isnan(explained_variance(target, np.ones(4)))


def make_ppo(seed=0, **kw) -> PPO:
    box = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    return PPO(observation_space=box, action_space=gym.spaces.Discrete(2), n_envs=2,
               total_steps=1000, seed=seed, n_steps=8, batch_size=8, normalize_obs=True, **kw)


def test_state_dict_round_trip_restores_acting_and_normalizer():
    a = make_ppo(seed=0)
    obs = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    for _ in range(3):
        a.explore(obs * 3 + 1)  # moves the observation normalizer
    b = make_ppo(seed=99)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.value(obs), b.value(obs))
    np.testing.assert_array_equal(a.act(obs, deterministic=True), b.act(obs, deterministic=True))
    # the sampling generator is part of the state too
    ea, eb = a.explore(obs), b.explore(obs)
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(x, y)
    for pa, pb in zip(a.net.parameters(), b.net.parameters()):
        assert torch.equal(pa, pb)
