"""RolloutCollector bootstrapping at time limits, EpisodeTracker, Evaluator."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rl_runner.algos.ppo import PPO
from rl_runner.envs import final_observations, make_vec_env
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.evaluation import Evaluator
from rl_runner.rollout import EpisodeTracker, RolloutCollector
from tests.algos.helpers import CARTPOLE_OBS

N_ENVS, N_STEPS, SEED, LIMIT = 3, 40, 7, 15


def make_algo() -> PPO:
    return PPO(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2),
               n_envs=N_ENVS, total_steps=10_000, seed=0, n_steps=N_STEPS, batch_size=8)


@pytest.fixture(scope="module")
def rollout():
    """A rollout on CartPole cut at 15 steps, replayed action by action on a twin env to find
    out independently which steps terminated, which were truncated and their final obs."""
    algo = make_algo()
    envs = make_vec_env("CartPole-v1", N_ENVS, {"max_episode_steps": LIMIT})
    collector = RolloutCollector(envs, N_STEPS, SEED)
    batch, episodes = collector.collect(algo)
    twin = make_vec_env("CartPole-v1", N_ENVS, {"max_episode_steps": LIMIT})
    obs, _ = twin.reset(seed=SEED)
    terminated = np.zeros((N_STEPS, N_ENVS), bool)
    truncated = np.zeros((N_STEPS, N_ENVS), bool)
    final_obs: dict[tuple[int, int], np.ndarray] = {}
    next_obs = np.zeros((N_STEPS, N_ENVS, 4), np.float32)
    for t in range(N_STEPS):
        obs, _, term, trunc, info = twin.step(batch.actions[t])
        terminated[t], truncated[t] = term, trunc & ~term
        next_obs[t] = obs
        if truncated[t].any():
            for i, o in zip(np.flatnonzero(truncated[t]), final_observations(info, truncated[t])):
                final_obs[(t, int(i))] = o
    envs.close()
    twin.close()
    return algo, collector, batch, episodes, terminated, truncated, final_obs, next_obs


def test_the_rollout_has_both_kinds_of_episode_end(rollout):
    _, _, batch, _, terminated, truncated, _, _ = rollout
    assert terminated.any() and truncated.any()
    np.testing.assert_array_equal(batch.dones, terminated | truncated)
    assert batch.obs.shape == (N_STEPS, N_ENVS, 4)
    assert batch.rewards.shape == batch.next_values.shape == (N_STEPS, N_ENVS)


def test_next_values_are_zero_where_terminated(rollout):
    _, _, batch, _, terminated, _, _, _ = rollout
    assert np.all(batch.next_values[terminated] == 0.0)


def test_next_values_bootstrap_from_the_final_obs_where_truncated(rollout):
    algo, _, batch, _, _, truncated, final_obs, next_obs = rollout
    for (t, i), obs in final_obs.items():
        expected = algo.value(obs[None].astype(np.float32))[0]
        assert batch.next_values[t, i] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # ... not from the first observation of the next episode
        wrong = algo.value(next_obs[t, i][None])[0]
        assert batch.next_values[t, i] != pytest.approx(wrong, rel=1e-5, abs=1e-6)


def test_next_values_elsewhere_are_the_next_steps_values(rollout):
    algo, collector, batch, _, _, _, _, _ = rollout
    going_on = ~batch.dones[:-1]
    np.testing.assert_allclose(batch.next_values[:-1][going_on], batch.values[1:][going_on],
                               rtol=1e-5, atol=1e-6)
    last = ~batch.dones[-1]
    np.testing.assert_allclose(batch.next_values[-1][last], algo.value(collector.obs)[last],
                               rtol=1e-5, atol=1e-6)


def test_episodes_reported_with_their_step_offsets(rollout):
    _, _, batch, episodes, terminated, truncated, _, _ = rollout
    ends = terminated | truncated
    assert len(episodes) == int(ends.sum())
    expected_offsets = sorted((t + 1) * N_ENVS for t, _ in zip(*np.nonzero(ends)))
    assert sorted(off for off, _, _ in episodes) == expected_offsets
    for _, ret, length in episodes:
        assert 1 <= length <= LIMIT
        assert ret == length  # CartPole pays 1 per step


def test_collector_state_round_trip_continues_identically():
    """What resume relies on: collector state + env state + algo state give the same rollout."""
    algo_a, algo_b = make_algo(), make_algo()
    envs_a = make_vec_env("CartPole-v1", N_ENVS)
    envs_b = make_vec_env("CartPole-v1", N_ENVS)
    a, b = RolloutCollector(envs_a, 8, SEED), RolloutCollector(envs_b, 8, SEED + 1)
    for _ in range(3):
        a.collect(algo_a)
    b.load_state_dict(a.state_dict())
    restore_env_state(envs_b, env_state(envs_a))
    algo_b.load_state_dict(algo_a.state_dict())
    (batch_a, eps_a), (batch_b, eps_b) = a.collect(algo_a), b.collect(algo_b)
    for x, y in zip(batch_a, batch_b):
        np.testing.assert_array_equal(x, y)
    assert eps_a == eps_b
    envs_a.close()
    envs_b.close()


def test_episode_tracker():
    tracker = EpisodeTracker(2)
    assert tracker.step(np.array([1.0, 2.0]), np.array([False, False])) == []
    assert tracker.step(np.array([1.0, 0.5]), np.array([False, True])) == [(1, 2.5, 2)]
    assert tracker.step(np.array([3.0, 1.0]), np.array([True, True])) == [(0, 5.0, 3),
                                                                          (1, 1.0, 1)]
    state = tracker.state_dict()
    tracker.step(np.array([1.0, 1.0]), np.array([False, False]))
    fresh = EpisodeTracker(2)
    fresh.load_state_dict(tracker.state_dict())
    assert fresh.step(np.array([0.0, 1.0]), np.array([True, True])) == [(0, 1.0, 2), (1, 2.0, 2)]
    assert state["returns"].tolist() == [0.0, 0.0]  # a copy, not a view of the live arrays


def lean_policy(obs: np.ndarray) -> np.ndarray:
    """Push the cart the way the pole leans: deterministic, 30-60 steps per episode."""
    return (obs[:, 2] > 0).astype(np.int64)


@pytest.mark.parametrize("episodes,max_envs", [(2, 20), (5, 2)])
def test_evaluator_runs_the_requested_episodes_reproducibly(episodes, max_envs):
    ev = Evaluator("CartPole-v1", episodes, seed=123, max_envs=max_envs)
    try:
        first, second = ev.run(lean_policy), ev.run(lean_policy)
    finally:
        ev.close()
    assert first["episodes"] == episodes
    assert first == second
    assert first["return_mean"] == first["length_mean"]  # 1 reward per step


@pytest.mark.parametrize("episodes,max_envs", [(3, 20), (5, 2)])
def test_evaluator_steps_only_the_envs_still_playing(episodes, max_envs):
    """Every env step the policy is asked for belongs to an episode that is counted: an env
    whose quota is done waits for the others instead of playing on."""
    ev = Evaluator("CartPole-v1", episodes, seed=7, max_envs=max_envs)
    sizes = []

    def policy(obs):
        sizes.append(len(obs))
        return lean_policy(obs)

    try:
        result = ev.run(policy)
    finally:
        ev.close()
    assert sum(sizes) == result["length_mean"] * episodes
    assert sizes[0] == min(episodes, max_envs) > sizes[-1] == 1


def test_evaluator_matches_single_env_episodes():
    """One episode per env: env i is seeded with seed + i (gymnasium's vector reset)."""
    ev = Evaluator("CartPole-v1", 3, seed=50)
    try:
        result = ev.run(lean_policy)
    finally:
        ev.close()
    returns = []
    for i in range(3):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=50 + i)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(int(lean_policy(obs[None])[0]))
            total += r
            done = term or trunc
        env.close()
        returns.append(total)
    assert result["return_mean"] == pytest.approx(np.mean(returns))
    assert result["return_std"] == pytest.approx(np.std(returns))
    assert len(set(returns)) > 1  # the seeds really differ
