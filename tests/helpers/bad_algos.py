"""Algorithm classes that break the family contracts (tests/test_contracts.py)."""
from __future__ import annotations

import numpy as np

from rl_runner.algos.contracts import OnPolicy


class Plain:  # no family base at all
    def __init__(self, **kwargs):
        pass


class NoExplore(OnPolicy):  # leaves an abstract method unwritten
    def __init__(self, *, observation_space, action_space, n_envs, total_steps, seed=0):
        self.n_steps = 8

    def value(self, obs):
        return np.zeros(len(obs), np.float32)

    def act(self, obs, deterministic=False):
        return np.zeros(len(obs), np.int64)

    def update(self, batch):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class NoSteps(NoExplore):  # writes every method but never sets n_steps
    def __init__(self, *, observation_space, action_space, n_envs, total_steps, seed=0):
        pass

    def explore(self, obs):
        raise NotImplementedError


class Divides(NoSteps):  # its constructor fails with an exception of its own
    def __init__(self, *, observation_space, action_space, n_envs, total_steps, seed=0):
        1 / 0


class Thing:
    pass


class ObjectState(NoSteps):  # a state_dict a checkpoint cannot hold
    def __init__(self, *, observation_space, action_space, n_envs, total_steps, seed=0):
        self.n_steps = 8

    def state_dict(self):
        return {"thing": Thing()}
