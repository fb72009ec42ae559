"""FastSyncVectorEnv: step by step the same observations, rewards, flags and infos as
gymnasium's SyncVectorEnv, and its own step only where the spaces are arrays."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from rl_runner.envs import make_vec_env
from rl_runner.sync_env import FastSyncVectorEnv


class InfoEnv(gym.Env):
    """Box observations and actions, an info on some steps only, episodes that end by
    termination or by a time limit (TimeLimit below)."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {"start": self.t}

    def step(self, action):
        self.t += 1
        obs = self.np_random.normal(size=3).astype(np.float32) + float(action.sum())
        info = {"score": float(obs[0]), "arr": obs[:2].copy()} if self.t % 3 else {}
        return obs, float(obs[1]), bool(obs[2] > 1.5), False, info


def pair(make, n: int, copy: bool = False):
    """The same envs under SyncVectorEnv and FastSyncVectorEnv, reset from the same seed."""
    out = []
    for cls in (SyncVectorEnv, FastSyncVectorEnv):
        envs = cls([make] * n, autoreset_mode=AutoresetMode.SAME_STEP, copy=copy)
        out.append((envs, envs.reset(seed=3)))
    (ref, (obs_r, info_r)), (fast, (obs_f, info_f)) = out
    np.testing.assert_array_equal(obs_r, obs_f)
    return ref, fast


def same(a, b) -> None:
    """Equal values of equal types, through the nested infos (object arrays of final_obs)."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, tuple):  # Tuple observations
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            for x, y in zip(a, b):
                same(x, y)
        else:
            np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a is None and b is None)


@pytest.mark.parametrize("env_id, n", [("CartPole-v1", 1), ("CartPole-v1", 4),
                                       ("Pendulum-v1", 3), ("info", 3)])
def test_steps_are_syncvectorenvs(env_id, n):
    make = (lambda: gym.wrappers.TimeLimit(InfoEnv(), 7)) if env_id == "info" else \
        (lambda: gym.make(env_id))
    ref, fast = pair(make, n)
    assert fast.short_step
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(400):
        actions = ref.action_space.sample() if env_id != "CartPole-v1" else \
            rng.integers(0, 2, n)
        got, want = fast.step(actions), ref.step(actions)
        for g, w in zip(got, want):
            same(g, w)
        ended += int(want[2].sum() + want[3].sum())
    assert ended > 5  # episodes ended, by termination and (Pendulum, info) by the time limit


def test_returned_arrays_are_the_callers():
    """Rewards and flags are fresh arrays; observations are the env's own with copy=False
    (as SyncVectorEnv's) and fresh with copy=True."""
    for copy in (False, True):
        _, fast = pair(lambda: gym.make("CartPole-v1"), 2, copy=copy)
        first = fast.step(np.zeros(2, np.int64))
        second = fast.step(np.ones(2, np.int64))
        assert (first[0] is second[0]) is not copy
        for a, b in zip(first[1:4], second[1:4]):
            assert a is not b


def test_other_spaces_take_syncvectorenvs_step():
    make = lambda: gym.wrappers.FlattenObservation(gym.make("Blackjack-v1"))  # noqa: E731
    assert FastSyncVectorEnv([make], autoreset_mode=AutoresetMode.SAME_STEP).short_step
    make = lambda: gym.make("Blackjack-v1")  # noqa: E731 (Tuple observations)
    ref, fast = pair(make, 2)
    assert not fast.short_step
    for t in range(50):
        actions = np.array([t % 2, (t + 1) % 2])
        for g, w in zip(fast.step(actions), ref.step(actions)):
            same(g, w)
    envs = FastSyncVectorEnv([lambda: gym.make("CartPole-v1")],
                             autoreset_mode=AutoresetMode.NEXT_STEP)
    assert not envs.short_step


def test_sync_vectorization_builds_it():
    envs = make_vec_env("CartPole-v1", 2, vectorization="sync")
    try:
        assert isinstance(envs, FastSyncVectorEnv) and envs.short_step
    finally:
        envs.close()
