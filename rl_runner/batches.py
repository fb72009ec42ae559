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

    The fields after it are filled only for an algorithm that asks for them (OffPolicy.n_step,
    OffPolicy.prioritized); None otherwise:
    - `steps`: with n-step returns, the rewards summed into each row's `rewards` (discounted,
      r_t + gamma r_t+1 + ...), fewer than n where the episode ended or the buffer holds no more;
      `next_obs` and `terminated` are those of the last of them, so the target bootstraps with
      gamma ** steps.
    - `weights`: prioritized replay's importance-sampling weights, to scale each row's loss.
    - `indices`: the buffer rows drawn, for the algorithm's new priorities of them.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    next_obs: np.ndarray
    env_steps: int
    steps: np.ndarray | None = None
    weights: np.ndarray | None = None
    indices: np.ndarray | None = None


class OfflineBatch(NamedTuple):
    """One minibatch of dataset rows."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
