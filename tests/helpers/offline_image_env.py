"""A tiny env with uint8 image observations (4 x 12 x 12) for the offline and imitation tests.

Importing this module registers it as 'RLRunnerTest/TinyImages-v0' (Discrete(3) actions; with
kwargs continuous=True, Box(-1, 1, (2,)) actions; size=36 gives 4 x 36 x 36 images, the
smallest that the default Nature CNN takes); a subprocess finds it by MODULE_ENV_ID.
The image is the step count's brightness in the first channel and noise elsewhere; the reward
is 1 for action 0 (or a first Box coordinate above 0), so that any policy has a return.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "RLRunnerTest/TinyImages-v0"
MODULE_ENV_ID = f"{__name__}:{ENV_ID}"
SHAPE = (4, 12, 12)
# cnn settings that fit a 12 x 12 image and keep the tests fast
SMALL_CNN = ["algo.cnn_channels=[4,8]", "algo.cnn_kernels=[3,3]", "algo.cnn_strides=[1,1]",
             "algo.cnn_features=16"]


class TinyImages(gym.Env):
    def __init__(self, continuous: bool = False, size: int = SHAPE[1]):
        self.shape = (SHAPE[0], size, size)
        self.observation_space = gym.spaces.Box(0, 255, self.shape, np.uint8)
        self.continuous = continuous
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if continuous \
            else gym.spaces.Discrete(3)
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = self.np_random.integers(0, 256, self.shape, dtype=np.uint8)
        obs[0] = min(25 * self.t, 255)
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        good = float(action[0]) > 0 if self.continuous else int(action) == 0
        return self._obs(), float(good), False, False, {}


def image_rows(n: int, continuous: bool = False, seed: int = 0,
               size: int = SHAPE[1]) -> dict[str, np.ndarray]:
    """n random rows as a dataset of this env holds them (episodes of 10 steps)."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (n, SHAPE[0], size, size), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32) if continuous \
        else rng.integers(0, 3, n)
    starts = np.arange(n) % 10 == 0
    return dict(observations=obs, actions=actions, rewards=np.ones(n, np.float32),
                next_observations=np.roll(obs, -1, 0), terminations=np.zeros(n, bool),
                truncations=np.roll(starts, -1), episode_starts=starts)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=TinyImages, max_episode_steps=10)
