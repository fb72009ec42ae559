"""The replay buffer (ring wraparound, sampling, state, n-step returns), prioritized replay and
the off-policy feeder."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.sac import SAC
from rl_runner.envs import make_vec_env
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.replay import ReplayBuffer, ReplayFeeder
from rl_runner.sum_tree import Priorities


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


# ---- n-step returns -----------------------------------------------------------------------------
def test_n_step_returns_stop_at_episode_ends_and_at_the_newest_rows():
    """One env, gamma 0.5, n 3. Rows 0-2: an episode truncated at row 2; rows 3-4: one
    terminated at row 4; rows 5-6: still running. Reward of row i: i + 1; next obs of row i:
    10 i."""
    buf = ReplayBuffer(16, obs_dim=1, action_dim=1, n_step=3, gamma=0.5)
    i = np.arange(7, dtype=np.float32)
    term = np.isin(i, [4])
    ends = np.isin(i, [2, 4])
    buf.add(i[:, None], i[:, None], i + 1, term, 10 * i[:, None], ends)
    batch = buf.sample(1, 7, np.random.default_rng(0), idx=np.arange(7)[None])
    want = {  # row: (return, steps, next obs, terminated)
        0: (1 + 0.5 * 2 + 0.25 * 3, 3, 20, 0),  # the truncation cuts nothing here: n ends it
        1: (2 + 0.5 * 3, 2, 20, 0),  # truncated at row 2: bootstraps from its final obs
        2: (3, 1, 20, 0),
        3: (4 + 0.5 * 5, 2, 40, 1),  # terminated at row 4: no bootstrap
        4: (5, 1, 40, 1),
        5: (6 + 0.5 * 7, 2, 60, 0),  # row 7 is not written yet
        6: (7, 1, 60, 0),
    }
    got = zip(batch.rewards[0], batch.steps[0], batch.next_obs[0, :, 0], batch.terminated[0])
    assert [tuple(map(float, g)) for g in got] == [tuple(map(float, w)) for w in want.values()]
    np.testing.assert_array_equal(batch.obs[0, :, 0], i)  # obs and action: the first row's
    np.testing.assert_array_equal(batch.actions[0, :, 0], i)


def test_n_step_rows_follow_their_own_env_across_the_ring_end():
    """Two envs interleaved (rows e, e + 2, ...), a ring of 6 rows written 5 steps: the oldest
    steps are overwritten, and an env's next row is 2 rows on, wrapping round."""
    buf = ReplayBuffer(6, obs_dim=1, action_dim=1, n_envs=2, n_step=2, gamma=0.5)
    for t in range(5):  # env e's reward at step t: 10 t + e
        r = np.array([10 * t, 10 * t + 1], np.float32)
        buf.add(r[:, None], np.zeros((2, 1)), r, np.zeros(2, bool), r[:, None] + 0.5)
    rows = np.arange(6)[None]  # hold steps 2, 3, 4; step 3 sits at rows 0 and 1
    batch = buf.sample(1, 6, np.random.default_rng(0), idx=rows)
    first = batch.obs[0, :, 0]
    np.testing.assert_array_equal(first, [30, 31, 40, 41, 20, 21])
    np.testing.assert_array_equal(batch.rewards[0], [30 + 20, 31 + 20.5, 40, 41, 20 + 15,
                                                     21 + 15.5])
    np.testing.assert_array_equal(batch.steps[0], [2, 2, 1, 1, 2, 2])
    np.testing.assert_array_equal(batch.next_obs[0, :, 0], [40.5, 41.5, 40.5, 41.5, 30.5, 31.5])


def test_a_restart_without_an_episode_end_cuts_the_n_step_sums():
    buf = ReplayBuffer(8, obs_dim=1, action_dim=1, n_step=3, gamma=0.5)
    one = np.ones(1, np.float32)
    buf.add(one[:, None], one[:, None], one, np.zeros(1, bool), one[:, None])
    buf.cut()  # a resume restarts the episodes
    buf.add(one[:, None], one[:, None], 2 * one, np.zeros(1, bool), one[:, None])
    batch = buf.sample(1, 1, np.random.default_rng(0), idx=np.zeros((1, 1), np.int64))
    assert batch.rewards[0, 0] == 1 and batch.steps[0, 0] == 1


def test_one_step_buffers_are_as_before():
    """n_step 1 (sac): no episode-end column, and no steps in the batch."""
    buf = ReplayBuffer(8, obs_dim=3, action_dim=1)
    assert buf.width == 3 + 1 + 2 + 3
    add_steps(buf, 0, 4)
    assert buf.sample(1, 4, np.random.default_rng(0)).steps is None


# ---- prioritized replay -------------------------------------------------------------------------
def test_sum_tree_draws_rows_in_proportion_to_their_priorities():
    p = np.array([1.0, 0.0, 3.0, 6.0, 0.5, 0.0, 2.5])  # 7 rows: a tree of 8 leaves
    pri = Priorities(7, alpha=1.0)
    pri.tree.set(np.arange(7), p)
    assert pri.tree.total == pytest.approx(13.0)
    idx = pri.draw((50, 2000), np.random.default_rng(0))
    freq = np.bincount(idx.ravel(), minlength=8) / idx.size
    np.testing.assert_allclose(freq[:7], p / p.sum(), atol=0.005)
    assert freq[[1, 5, 7]].sum() == 0  # rows of priority 0 and the unused leaf: never


def test_priorities_take_alpha_new_rows_the_largest_and_weights_the_paper():
    pri = Priorities(4, alpha=0.5)
    pri.added(np.arange(4))
    assert pri.tree.get(np.arange(4)).tolist() == [1.0] * 4  # the largest so far: 1
    pri.update(np.array([0, 1, 2]), np.array([4.0, 1.0, 9.0]))
    np.testing.assert_allclose(pri.tree.get(np.arange(4)), [2.0, 1.0, 3.0, 1.0])  # p^alpha
    assert pri.max_priority == 9.0
    pri.added(np.array([1]))
    assert pri.tree.get(np.array([1]))[0] == 3.0
    # w_i = (N P(i))^-beta / max_j w_j, here over rows 0 and 3 (P = 2/9 and 1/9), N = 4
    w = pri.weights(np.array([[0, 3]]), beta=0.5, held=4)
    raw = (4 * np.array([2 / 9, 1 / 9])) ** -0.5
    np.testing.assert_allclose(w[0], raw / raw.max(), rtol=1e-6)


def test_priorities_state_rebuilds_the_same_tree_and_bad_state_is_refused():
    pri = Priorities(5, alpha=0.7)
    pri.added(np.arange(5))
    pri.update(np.array([1, 3]), np.array([0.3, 2.2]))
    fresh = Priorities(5, alpha=0.7)
    fresh.load_state_dict(pri.state_dict())
    np.testing.assert_array_equal(fresh.tree.tree, pri.tree.tree)
    assert fresh.max_priority == pri.max_priority
    state = pri.state_dict()
    for bad in ({**state, "priorities": state["priorities"][:4]},
                {**state, "priorities": -state["priorities"]},
                {**state, "max_priority": "big"}, None):
        with pytest.raises(ValueError, match="priorities must be 5 finite"):
            fresh.load_state_dict(bad)


class PrioritizedSAC(SAC):
    """sac with the contract's prioritized replay switched on: a new priority of 7 for every
    row of each batch."""

    prioritized, per_alpha = True, 1.0

    def update(self, batch):
        self.batch = batch
        return {}

    def take_priorities(self):
        batch, self.batch = getattr(self, "batch", None), None
        return None if batch is None else (batch.indices, np.full(batch.indices.shape, 7.0))


def make_prioritized() -> tuple:
    envs = make_vec_env("Pendulum-v1", 2)
    torch.manual_seed(0)
    algo = PrioritizedSAC(observation_space=envs.single_observation_space,
                          action_space=envs.single_action_space, n_envs=2, total_steps=1000,
                          hidden_sizes=[8], batch_size=4, learning_starts=8, buffer_size=50,
                          train_freq=2, gradient_steps=3)
    return envs, algo, ReplayFeeder(envs, algo, seed=0)


def test_the_feeder_weights_batches_and_takes_the_algorithms_new_priorities():
    envs, algo, feeder = make_prioritized()
    batch = None
    while batch is None:
        batch, _ = feeder.collect(algo)
    assert batch.indices.shape == batch.weights.shape == (3, 4)
    np.testing.assert_array_equal(batch.weights, 1.0)  # every row at the largest priority: 1
    np.testing.assert_array_equal(batch.obs, feeder.buffer.data[batch.indices, :3])
    algo.update(batch)
    feeder.collect(algo)  # takes the new priorities before it samples
    pri = feeder.priorities
    np.testing.assert_array_equal(pri.tree.get(batch.indices), 7.0)
    assert pri.max_priority == 7.0
    np.testing.assert_array_equal(pri.tree.get(feeder.buffer.newest(4)), 7.0)  # new rows
    envs.close()


def test_a_saved_buffer_holds_the_priorities_and_a_bad_one_is_refused():
    envs, algo, feeder = make_prioritized()
    for _ in range(5):
        batch, _ = feeder.collect(algo)
        if batch is not None:
            algo.update(batch)
    state = feeder.buffer_state()  # the last update's priorities taken first
    assert state["priorities"]["max_priority"] == 7.0
    _, _, fresh = make_prioritized()
    fresh.load_buffer_state(state, "last.pt")
    np.testing.assert_array_equal(fresh.priorities.tree.tree, feeder.priorities.tree.tree)
    np.testing.assert_array_equal(fresh.buffer.data, feeder.buffer.data)
    with pytest.raises(ValueError, match="priorities are missing"):
        fresh.load_buffer_state({k: v for k, v in state.items() if k != "priorities"}, "x")
    with pytest.raises(ValueError, match="priorities must be 50 finite"):
        fresh.load_buffer_state({**state, "priorities": {"priorities": np.ones(3)}}, "x")
    plain = ReplayFeeder(envs, make_sac("Pendulum-v1", 2, buffer_size=50), seed=0)
    with pytest.raises(ValueError, match="no prioritized replay"):
        plain.load_buffer_state(state, "x")
    envs.close()
