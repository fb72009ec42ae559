"""n-step returns read from a replay buffer at sampling time, so that nothing is stored twice.

A buffer stores one-step transitions; a sampled row's n-step transition follows the rows of its
env after it: r_t + gamma r_t+1 + ... + gamma^(k-1) r_t+k-1, with the next observation and the
terminated flag of row t+k-1, where k is n, or fewer where the episode ended within those rows
(terminated: the target will not bootstrap; truncated, or cut by a restart: it bootstraps from
the real final observation with gamma^k) or where the buffer holds no later row yet. These are
the targets of Sutton & Barto (2018, section 7.1) without off-policy corrections, as in Rainbow
(Hessel et al. 2018) and SB3's NStepReplayBuffer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Rows = np.ndarray  # a buffer's row numbers, any shape


def n_step_returns(rows: Rows, n: int, gamma: float, reward: Callable[[Rows], np.ndarray],
                   ended: Callable[[Rows], np.ndarray],
                   following: Callable[[Rows], tuple[Rows, np.ndarray]]
                   ) -> tuple[Rows, np.ndarray, np.ndarray]:
    """(last rows, discounted reward sums float32, rewards summed float32) from each of `rows`.

    reward(rows): their rewards; ended(rows): whether their episode ended there (terminated or
    truncated); following(rows): the next rows of the same envs, and whether each is stored."""
    last = rows.copy()
    returns = reward(rows).astype(np.float64)
    steps = np.ones(rows.shape, np.float32)
    going = ~ended(rows)
    for k in range(1, n):
        nxt, stored = following(last)
        going &= stored
        if not going.any():
            break
        rows_k = nxt[going]
        returns[going] += gamma ** k * reward(rows_k)
        last[going] = rows_k
        steps[going] += 1
        going[going] = ~ended(rows_k)
    return last, returns.astype(np.float32), steps
