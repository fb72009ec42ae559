"""A tiny env of the user's own, which EnvPool cannot have: importing this module registers it
as 'RLRunnerTest/Plain-v0' ('tests.helpers.plain_env:RLRunnerTest/Plain-v0' imports it)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "RLRunnerTest/Plain-v0"
MODULE_ENV_ID = f"{__name__}:{ENV_ID}"


class PlainEnv(gym.Env):
    """Zero observations, reward 1 for action 1; ends by its time limit."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), float(action == 1), False, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=PlainEnv, max_episode_steps=10)
