"""A tiny env with a MultiDiscrete action space, which no rl-runner algorithm supports.

Importing this module registers it as 'RLRunnerTest/MultiDiscrete-v0'; gymnasium also imports it
on demand for the id 'tests.helpers.multidiscrete_env:RLRunnerTest/MultiDiscrete-v0'.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

ENV_ID = "RLRunnerTest/MultiDiscrete-v0"
MODULE_ENV_ID = f"{__name__}:{ENV_ID}"


class MultiDiscreteEnv(gym.Env):
    """Zero observations, no reward; ends by its time limit."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=MultiDiscreteEnv, max_episode_steps=10)
