"""The replay buffer (ring wraparound, sampling, state) and the off-policy feeder."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.sac import SAC
from rl_runner.envs import make_vec_env
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.replay import ReplayBuffer, ReplayFeeder


def add_steps(buf: ReplayBuffer, first: int, n: int) -> None:
    """n transitions whose every field encodes its index: obs = i, action = -i, reward = i."""
    i = np.arange(first, first + n, dtype=np.float32)
    buf.add(np.repeat(i[:, None], buf.obs_dim, 1), -i[:, None], i, i % 2 == 0,
            np.repeat(i[:, None] + 0.5, buf.obs_dim, 1))


def stored(buf: ReplayBuffer) -> list[float]:
    return buf.data[:buf.size, 0].tolist()


def test_rows_keep_their_fields_together():
    buf = ReplayBuffer(8, obs_dim=3, action_dim=1)
    add_steps(buf, 0, 4)
    batch = buf.sample(2, 50, np.random.default_rng(0))
    assert batch.obs.shape == (2, 50, 3) and batch.next_obs.shape == (2, 50, 3)
    assert batch.actions.shape == (2, 50, 1)
    assert batch.rewards.shape == batch.terminated.shape == (2, 50)
    i = batch.rewards
    np.testing.assert_array_equal(batch.obs, np.repeat(i[..., None], 3, -1))
    np.testing.assert_array_equal(batch.actions[..., 0], -i)
    np.testing.assert_array_equal(batch.next_obs[..., 0], i + 0.5)
    np.testing.assert_array_equal(batch.terminated, (i % 2 == 0).astype(np.float32))


def test_wraparound_overwrites_the_oldest_rows():
    buf = ReplayBuffer(5, obs_dim=2, action_dim=1)
    add_steps(buf, 0, 3)
    assert (buf.pos, buf.size) == (3, 3)
    assert stored(buf) == [0, 1, 2]
    add_steps(buf, 3, 4)  # crosses the end: rows 3, 4, then 0, 1
    assert (buf.pos, buf.size) == (2, 5)
    assert stored(buf) == [5, 6, 2, 3, 4]
    add_steps(buf, 7, 3)
    assert (buf.pos, buf.size) == (0, 5)
    assert stored(buf) == [5, 6, 7, 8, 9]


def test_an_add_as_large_as_the_buffer_keeps_the_newest():
    buf = ReplayBuffer(4, obs_dim=1, action_dim=1)
    add_steps(buf, 0, 1)
    add_steps(buf, 1, 4)
    assert buf.size == 4 and buf.pos == 1
    assert sorted(stored(buf)) == [1, 2, 3, 4]


def test_sampling_draws_only_filled_rows_and_covers_them_uniformly():
    buf = ReplayBuffer(1000, obs_dim=1, action_dim=1)
    add_steps(buf, 0, 10)
    batch = buf.sample(4, 2500, np.random.default_rng(1))
    values, counts = np.unique(batch.rewards, return_counts=True)
    assert values.tolist() == list(range(10))  # never the empty rows beyond `size`
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected each


def test_sampling_is_determined_by_the_rng():
    buf = ReplayBuffer(100, obs_dim=2, action_dim=1)
    add_steps(buf, 0, 60)
    a = buf.sample(2, 32, np.random.default_rng(7))
    b = buf.sample(2, 32, np.random.default_rng(7))
    np.testing.assert_array_equal(a.obs, b.obs)
    assert not np.array_equal(a.obs[0], a.obs[1])


def test_state_dict_round_trip():
    buf = ReplayBuffer(6, obs_dim=2, action_dim=1)
    add_steps(buf, 0, 8)
    other = ReplayBuffer(6, obs_dim=2, action_dim=1)
    add_steps(other, 100, 2)
    other.load_state_dict(buf.state_dict())
    assert (other.pos, other.size) == (buf.pos, buf.size)
    np.testing.assert_array_equal(other.data, buf.data)
    add_steps(buf, 8, 1)
    add_steps(other, 8, 1)
    np.testing.assert_array_equal(other.data, buf.data)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(7, obs_dim=2, action_dim=1).load_state_dict(buf.state_dict())


# ---- the feeder ----------------------------------------------------------------------------------
def make_sac(env_id: str, n_envs: int, **kw) -> SAC:
    envs = make_vec_env(env_id, 1)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    envs.close()
    torch.manual_seed(0)  # network initialisation
    args = dict(observation_space=obs_space, action_space=act_space, n_envs=n_envs,
                total_steps=10_000, seed=0, hidden_sizes=[16, 16], batch_size=8,
                learning_starts=10, buffer_size=1000)
    return SAC(**{**args, **kw})


def test_feeder_warms_up_then_hands_out_minibatches():
    envs = make_vec_env("Pendulum-v1", 2)
    algo = make_sac("Pendulum-v1", 2, train_freq=2, gradient_steps=3, learning_starts=8)
    feeder = ReplayFeeder(envs, algo, seed=0)
    sizes = []
    batch = None
    while batch is None:
        batch, _ = feeder.collect(algo)
        sizes.append(feeder.buffer.size)
    assert sizes == [4, 8]  # 2 steps x 2 envs per call; updates once 8 are stored
    assert batch.obs.shape == (3, 8, 3) and batch.actions.shape == (3, 8, 1)
    assert batch.env_steps == 8
    # warm-up actions are uniform in the policy space [-1, 1]
    assert np.abs(feeder.buffer.data[:8, 3]).max() <= 1.0
    envs.close()


def test_feeder_stores_final_observations_and_terminated_only():
    """Pendulum truncates at 200 steps: the stored successor is the final obs, not the reset one,
    and a time limit is stored as not terminated (it bootstraps)."""
    envs = make_vec_env("Pendulum-v1", 1)
    algo = make_sac("Pendulum-v1", 1, train_freq=200, learning_starts=1000)
    feeder = ReplayFeeder(envs, algo, seed=3)
    _, episodes = feeder.collect(algo)
    assert [(offset, length) for offset, _, length in episodes] == [(200, 200)]
    data, buf = feeder.buffer.data, feeder.buffer
    obs, next_obs = data[:200, 0:3], data[:200, 6:9]
    np.testing.assert_array_equal(next_obs[:-1], obs[1:])  # a chain within the episode
    assert not data[:200, 5].any()  # terminated column
    reset_obs = feeder.obs.copy()
    assert not np.allclose(next_obs[-1], reset_obs[0])  # the final obs, not the next episode's
    feeder.collect(algo)
    np.testing.assert_array_equal(data[200, 0:3], reset_obs[0])
    assert buf.size == 400


def test_feeder_marks_terminations():
    envs = make_vec_env("CartPole-v1", 2)
    algo = make_sac("CartPole-v1", 2, train_freq=100, learning_starts=1000)
    feeder = ReplayFeeder(envs, algo, seed=0)
    _, episodes = feeder.collect(algo)
    assert episodes  # random CartPole episodes end within 100 steps
    term = feeder.buffer.data[:200, 6].astype(bool)  # obs 4, action 1, reward, terminated
    assert term.sum() == len(episodes)
    assert set(np.unique(feeder.buffer.data[:200, 4])) <= {0.0, 1.0}  # discrete actions
    envs.close()


def test_feeder_state_dict_resumes_the_same_stream():
    def run(split: bool) -> np.ndarray:
        envs = make_vec_env("Pendulum-v1", 1)
        algo = make_sac("Pendulum-v1", 1, train_freq=5, learning_starts=10)
        feeder = ReplayFeeder(envs, algo, seed=0)
        for _ in range(3):
            feeder.collect(algo)
        if split:
            state = feeder.state_dict()
            buffer_state = feeder.buffer.state_dict()
            saved_envs = env_state(envs)
            feeder = ReplayFeeder(envs, algo, seed=99)  # resets the envs, as a new session does
            restore_env_state(envs, saved_envs)
            feeder.load_state_dict(state)
            feeder.buffer.load_state_dict(buffer_state)
        batch, _ = feeder.collect(algo)
        envs.close()
        return np.concatenate([feeder.buffer.data.ravel(), batch.obs.ravel()])

    np.testing.assert_array_equal(run(False), run(True))


def test_box_warmup_actions_reach_the_env_in_its_bounds():
    space = gym.spaces.Box(np.array([0.0, -1.0], np.float32), np.array([3.0, 5.0], np.float32))
    algo = SAC(observation_space=gym.spaces.Box(-1, 1, (2,), np.float32), action_space=space,
               n_envs=1, total_steps=100, hidden_sizes=[8])
    env_actions = algo.to_env(algo.random_actions(5000, np.random.default_rng(0)))
    assert env_actions.shape == (5000, 2)
    assert (env_actions >= space.low).all() and (env_actions <= space.high).all()
    np.testing.assert_allclose(env_actions.min(0), space.low, atol=0.01)
    np.testing.assert_allclose(env_actions.max(0), space.high, atol=0.01)


def test_batches_sampled_into_given_arrays_are_the_same():
    """The GPU path samples into pinned arrays (`out`), each field contiguous."""
    buf = ReplayBuffer(50, obs_dim=3, action_dim=2)
    i = np.arange(30, dtype=np.float32)
    buf.add(np.repeat(i[:, None], 3, 1), np.stack([i, -i], 1), i, i % 3 == 0,
            np.repeat(i[:, None], 3, 1) + 0.5)
    plain = buf.sample(2, 16, np.random.default_rng(3), env_steps=5)
    out = buf.empty_batch(2, 16)
    into = buf.sample(2, 16, np.random.default_rng(3), env_steps=5, out=out)
    assert into.obs is out.obs and into.obs.flags.c_contiguous and into.env_steps == 5
    for a, b in zip(plain, into):
        np.testing.assert_array_equal(a, b)
