"""A tiny Atari-like env: 12 x 12 grey frames stacked by gymnasium's FrameStackObservation.

Importing this module registers 'RLRunnerTest/Frames-v0' (uint8 (4, 12, 12), Discrete(3), a time
limit of 20 steps); a subprocess finds it by MODULE_ENV_ID. Each frame shows a bright bar in
one of three columns over noise; the reward is 1 where the action names the bar's column of the
newest frame, and a wrong action ends the episode with probability 0.2 (a termination).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from rl_runner.envs import make_vec_env

ENV_ID = "RLRunnerTest/Frames-v0"
MODULE_ENV_ID = f"{__name__}:{ENV_ID}"
SMALL_CNN = ["algo.cnn_channels=[8,16]", "algo.cnn_kernels=[4,3]", "algo.cnn_strides=[2,1]",
             "algo.cnn_features=32"]


class BarFrames(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (12, 12), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.bar = 0

    def _frame(self) -> np.ndarray:
        self.bar = int(self.np_random.integers(0, 3))
        frame = self.np_random.integers(0, 40, (12, 12), dtype=np.uint8)
        frame[2:10, 4 * self.bar:4 * self.bar + 4] = 255
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._frame(), {}

    def step(self, action):
        good = int(action) == self.bar
        terminated = not good and self.np_random.random() < 0.2
        return self._frame(), float(good), terminated, False, {}


def stacked() -> gym.Env:
    return gym.wrappers.FrameStackObservation(BarFrames(), 4)


def make_frame_vec_env(n_envs: int) -> gym.vector.VectorEnv:
    return make_vec_env(ENV_ID, n_envs)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=stacked, max_episode_steps=20)
