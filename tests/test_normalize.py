"""normalize.py against hand computation: running mean/std, observation clipping, reward scaling."""
from __future__ import annotations

import numpy as np
import pytest

from rl_runner.normalize import ObsNormalizer, RewardScaler, RunningMeanStd

PRIOR = 1e-4  # RunningMeanStd starts as this many pseudo-samples of mean 0, variance 1 (as SB3)


def pooled(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of the prior's pseudo-samples and `data` [n, ...] together,
    computed in one pass over everything, not as a stream."""
    total = PRIOR + len(data)
    mean = data.sum(0) / total
    m2 = PRIOR * (1.0 + mean**2) + ((data - mean) ** 2).sum(0)
    return mean, m2 / total


# ---- RunningMeanStd ----------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[7, 1, 30, 2, 60], [1] * 25])
def test_batches_give_the_statistics_of_all_the_data_at_once(sizes):
    """Uneven batches, single samples (variance 0 within the batch) and a mean far from the
    initial 0: only the parallel formula with its between-batch term gets these right."""
    rng = np.random.default_rng(0)
    data = rng.normal([5.0, -3.0, 0.0], [3.0, 0.5, 1e-3], size=(sum(sizes), 3))
    rms = RunningMeanStd((3,))
    start = 0
    for n in sizes:
        rms.update(data[start:start + n])
        start += n
    mean, var = pooled(data)
    np.testing.assert_allclose(rms.mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rms.var, var, rtol=1e-9, atol=1e-12)
    assert rms.count == pytest.approx(PRIOR + len(data))
    # the prior is negligible: these are the data's own mean and variance
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-3)
    np.testing.assert_allclose(rms.var[:2], data.var(0)[:2], rtol=1e-3)


def test_state_round_trip_copies_the_arrays():
    rms = RunningMeanStd((2,))
    rms.update(np.array([[1.0, 2.0], [3.0, 5.0]]))
    other = RunningMeanStd((2,))
    other.load_state_dict(rms.state_dict())
    rms.update(np.array([[100.0, 100.0]]))  # the source moves on; the copy must not
    mean, var = pooled(np.array([[1.0, 2.0], [3.0, 5.0]]))
    np.testing.assert_allclose(other.mean, mean)
    np.testing.assert_allclose(other.var, var)
    assert other.count == pytest.approx(PRIOR + 2)


# ---- ObsNormalizer -----------------------------------------------------------------------------
def test_observations_are_standardised_with_the_statistics_including_this_batch():
    rng = np.random.default_rng(1)
    obs = rng.normal([10.0, -2.0], [4.0, 0.1], size=(64, 2)).astype(np.float32)
    norm = ObsNormalizer((2,), enabled=True)
    out = norm(obs, update=True)
    mean, var = pooled(obs.astype(np.float64))
    np.testing.assert_allclose(out, (obs - mean) / np.sqrt(var + 1e-8), rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    # update=False (acting, evaluation) reads the statistics without moving them
    norm(obs * 10, update=False)
    np.testing.assert_allclose(norm.rms.mean, mean)


def test_outliers_are_clipped_to_the_clip_range():
    norm = ObsNormalizer((1,), enabled=True, clip=3.0)
    norm(np.arange(100, dtype=np.float32).reshape(-1, 1), update=True)
    std = np.sqrt(norm.rms.var[0])
    out = norm(np.array([[norm.rms.mean[0] + 50 * std], [norm.rms.mean[0] - 50 * std],
                         [norm.rms.mean[0] + std]], np.float32))
    np.testing.assert_allclose(out[:, 0], [3.0, -3.0, 1.0], rtol=1e-5)


def test_a_disabled_normalizer_passes_observations_through_and_learns_nothing():
    norm = ObsNormalizer((2,), enabled=False)
    obs = np.array([[1e3, -1e3]], np.float64)
    out = norm(obs, update=True)
    np.testing.assert_array_equal(out, obs)
    assert out.dtype == np.float32
    assert norm.rms.count == PRIOR


# ---- RewardScaler ------------------------------------------------------------------------------
def discounted_returns(rewards_TN: np.ndarray, dones_TN: np.ndarray, gamma: float,
                       start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VecNormalize's return tracker written out: ret = gamma ret + r, recorded, then zeroed
    where the episode ended. (every recorded return [T, N], the tracker after the last step)"""
    ret, seen = start.astype(np.float64).copy(), []
    for r, d in zip(rewards_TN, dones_TN):
        ret = gamma * ret + r
        seen.append(ret.copy())
        ret = np.where(d, 0.0, ret)
    return np.array(seen), ret


def test_the_return_tracker_by_hand_resets_at_dones():
    scaler = RewardScaler(n_envs=1, gamma=0.5, enabled=True, clip=100.0)
    rewards = np.ones((4, 1), np.float32)
    dones = np.array([[False], [True], [False], [False]])
    out = scaler(rewards, dones)
    # returns 1, 1 + 0.5 = 1.5, (done: back to 0) 1, 1.5; the tracker ends at 1.5
    mean, var = pooled(np.array([1.0, 1.5, 1.0, 1.5]))
    assert scaler.rms.mean == pytest.approx(mean)
    assert scaler.rms.var == pytest.approx(var)
    np.testing.assert_allclose(scaler.returns, [1.5])
    np.testing.assert_allclose(out, rewards / np.sqrt(var + 1e-8), rtol=1e-6)


def test_rollouts_in_a_row_match_the_discounted_return_statistics():
    """Several rollouts through one scaler: the statistics are those of every discounted return
    seen, the tracker carries over between rollouts, and each rollout is divided by the std as
    it stands after that rollout (the whole rollout is scaled at update time)."""
    rng = np.random.default_rng(2)
    T, N, gamma = 16, 3, 0.9
    scaler = RewardScaler(N, gamma, enabled=True)
    tracker, all_returns = np.zeros(N), []
    for _ in range(3):
        rewards = rng.normal(2.0, 1.0, (T, N)).astype(np.float32)
        dones = rng.random((T, N)) < 0.2
        out = scaler(rewards, dones)
        seen, tracker = discounted_returns(rewards, dones, gamma, tracker)
        all_returns.append(seen.reshape(-1))
        _, var = pooled(np.concatenate(all_returns))
        assert scaler.rms.var == pytest.approx(var, rel=1e-9)
        np.testing.assert_allclose(scaler.returns, tracker, rtol=1e-6)
        np.testing.assert_allclose(out, rewards / np.sqrt(var + 1e-8), rtol=1e-5)
        assert out.dtype == np.float32
    # not the plain reward variance: the discount accumulates (returns ~ 2 / (1 - 0.9) at most)
    assert scaler.rms.var > 2 * np.var(rewards)


def test_scaled_rewards_are_clipped():
    scaler = RewardScaler(n_envs=1, gamma=0.0, enabled=True, clip=1.5)
    rewards = np.array([[1.0], [-1.0], [1.0], [-1.0], [40.0], [-40.0]], np.float32)
    out = scaler(rewards, np.zeros((6, 1), bool))
    std = np.sqrt(pooled(rewards.astype(np.float64).reshape(-1))[1] + 1e-8)  # gamma 0: r itself
    np.testing.assert_allclose(out[:4, 0], rewards[:4, 0] / std, rtol=1e-6)
    assert abs(out[0, 0]) < 1.5  # the small ones are not clipped
    np.testing.assert_array_equal(out[4:, 0], [1.5, -1.5])


def test_a_disabled_scaler_returns_the_rewards_untouched():
    scaler = RewardScaler(n_envs=2, gamma=0.99, enabled=False)
    rewards = np.array([[5.0, -5.0]], np.float32)
    assert scaler(rewards, np.array([[True, False]])) is rewards
    assert scaler.rms.count == PRIOR and not scaler.returns.any()


def test_scaler_state_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    a = RewardScaler(2, 0.99, enabled=True)
    a(rng.normal(size=(8, 2)).astype(np.float32), rng.random((8, 2)) < 0.3)
    b = RewardScaler(2, 0.99, enabled=True)
    b.load_state_dict(a.state_dict())
    rewards, dones = rng.normal(size=(8, 2)).astype(np.float32), rng.random((8, 2)) < 0.3
    np.testing.assert_array_equal(a(rewards, dones), b(rewards, dones))
    np.testing.assert_array_equal(a.returns, b.returns)
