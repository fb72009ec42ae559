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
        envs.action_space.seed(5)
        out.append((envs, envs.reset(seed=3)))
    (ref, reset_r), (fast, reset_f) = out
    for a, b in zip(reset_r, reset_f):
        same(a, b)
    return ref, fast


def same(a, b) -> None:
    """Equal values of equal types, through the nested infos (object arrays of final_obs)."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)  # the same keys in the same order
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
    ended = 0
    for t in range(1000):
        actions = ref.action_space.sample()
        got, want = fast.step(actions), ref.step(actions)
        for g, w in zip(got, want):
            same(g, w)
        ended += int(want[2].sum() + want[3].sum())
        if t == 500:  # a partial reset reads the observations the steps left (_env_obs)
            mask = np.arange(n) % 2 == 0
            for g, w in zip(fast.reset(options={"reset_mask": mask}),
                            ref.reset(options={"reset_mask": mask})):
                same(g, w)
    assert ended > 10  # episodes ended, by termination and (Pendulum, info) by the time limit
    ref.close()
    fast.close()


class BadObsEnv(gym.Env):
    """Observations that are not what the space says: another dtype, or another shape."""

    def __init__(self, space: gym.spaces.Box, make_obs):
        self.observation_space, self.make_obs = space, make_obs
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, self.observation_space.dtype), {}

    def step(self, action):
        return self.make_obs(), 1.0, False, False, {}


@pytest.mark.parametrize("space, make_obs", [
    (gym.spaces.Box(-2.0, 2.0, (3,), np.float32), lambda: np.array([0.1, 1.7, -1.3])),  # f64
    (gym.spaces.Box(0, 255, (3,), np.uint8), lambda: np.array([0.1, 1.7, 2.2])),  # refused
    (gym.spaces.Box(-2.0, 2.0, (3,), np.float32), lambda: np.ones((1, 3), np.float32)),
    (gym.spaces.Box(-2.0, 2.0, (3,), np.float32), lambda: [0.5, 0.25, 1.0]),  # a list
])
def test_observations_off_the_space_get_syncvectorenvs_fill(space, make_obs):
    """Cast where SyncVectorEnv casts them, refused with its error where it refuses them."""
    ref, fast = pair(lambda: BadObsEnv(space, make_obs), 2)
    actions = np.zeros(2, np.int64)
    try:
        want = ref.step(actions)
    except Exception as e:  # noqa: BLE001 (whatever gymnasium raises, the fast step raises)
        with pytest.raises(type(e)):
            fast.step(actions)
        return
    for g, w in zip(fast.step(actions), want):
        same(g, w)


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
    flat = FastSyncVectorEnv([make], autoreset_mode=AutoresetMode.SAME_STEP)
    assert flat.short_step
    flat.close()
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
    for e in (ref, fast, envs):
        e.close()


def test_sync_vectorization_builds_it():
    envs = make_vec_env("CartPole-v1", 2, vectorization="sync")
    try:
        assert isinstance(envs, FastSyncVectorEnv) and envs.short_step
    finally:
        envs.close()
