"""What each family's feeder hands to `update`: numpy arrays in named tuples, nothing else.

Algorithms import these; they never import a feeder (rollout.py, replay.py, offline.py)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Rollout(NamedTuple):
    """n_steps x n_envs of on-policy experience, as numpy arrays shaped [T, N, ...].

    `next_values` holds V(s_{t+1}) for continuing steps, V(final observation) where the episode was
    truncated (a time limit is not death, so it bootstraps) and 0 where it terminated.
    """

    obs: np.ndarray
    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    next_values: np.ndarray


class ReplayBatch(NamedTuple):
    """`gradient_steps` minibatches of transitions, numpy views shaped [G, B, ...].

    `next_obs` is the real successor observation (the final one where an episode ended) and
    `terminated` excludes time-limit truncation, so that a time limit still bootstraps.
    `env_steps` is the feeder's env step count when the batch was drawn (for lr schedules).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    next_obs: np.ndarray
    env_steps: int


class OfflineBatch(NamedTuple):
    """One minibatch of dataset rows."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
