"""Proportional prioritized replay (Schaul et al. 2016, section 3.3 and appendix B.2.1).

Row i of a replay buffer is drawn with probability P(i) = p_i^alpha / sum_k p_k^alpha, where
p_i = |TD error| + eps is the priority the algorithm last gave it, and a new row gets the largest
priority seen so far. Its loss is scaled by the importance-sampling weight (N P(i))^-beta, divided
by the largest weight of its minibatch. The sums live in a binary tree: drawing and updating B
rows are a few numpy operations per tree level, never a Python loop over rows.
"""
from __future__ import annotations

import numpy as np


class SumTree:
    """Non-negative values of `size` leaves and the sums of every subtree, in float64.

    Node 1 is the root and node j has children 2j and 2j + 1; leaf i is node `leaves` + i.
    A node's sum is always recomputed from its two children (never updated by differences), so
    the tree is a function of its leaves alone: rebuilt from saved leaves it is the same, bit for
    bit."""

    def __init__(self, size: int):
        self.size = size
        self.leaves = 1 << max(0, (size - 1).bit_length())  # a power of two >= size
        self.tree = np.zeros(2 * self.leaves)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.tree[np.asarray(idx) + self.leaves]

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Leaves idx take `values` (where idx repeats, one of its values), then every sum above
        them is recomputed, a level at a time."""
        node = np.asarray(idx, np.int64).reshape(-1) + self.leaves
        self.tree[node] = np.asarray(values, np.float64).reshape(-1)
        while len(node) and node[0] > 1:
            node = node // 2  # repeated parents get the same sum: no need to make them unique
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf where the running sum of leaves passes each `mass` in [0, total): a leaf of
        positive value, also where rounding puts a mass at or past the total."""
        node = np.ones(mass.shape, np.int64)
        mass = mass.astype(np.float64, copy=True)
        while node.size and node.flat[0] < self.leaves:  # every path has the same depth
            left = self.tree[2 * node]
            right = (mass >= left) & (self.tree[2 * node + 1] > 0)
            mass -= np.where(right, left, 0.0)
            node = 2 * node + right
        return node - self.leaves


class Priorities:
    """The priorities of a buffer's rows (buffer.rows of them; row numbers as the buffer gives
    them in batch.indices) and how they are drawn and weighted."""

    def __init__(self, rows: int, alpha: float):
        self.tree, self.alpha = SumTree(rows), alpha
        self.max_priority = 1.0  # p of new rows: the largest seen (1 before any)

    def added(self, idx: np.ndarray) -> None:
        """Rows just written: the largest priority, so that each is drawn soon."""
        self.tree.set(idx, np.full(len(idx), self.max_priority ** self.alpha))

    def update(self, idx: np.ndarray, priorities: np.ndarray) -> None:
        p = np.asarray(priorities, np.float64).reshape(-1)
        self.tree.set(idx, p ** self.alpha)
        self.max_priority = max(self.max_priority, float(p.max(initial=0.0)))

    def drop(self, idx: np.ndarray) -> None:
        """Rows that must not be drawn (a frame stack that is not whole): priority 0."""
        self.tree.set(idx, np.zeros(len(idx)))

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """[G, B] rows: each minibatch draws one row from each of B equal slices of the total
        mass (stratified, as the paper's appendix B.2.1)."""
        G, B = shape
        mass = (np.arange(B) + rng.random((G, B))) * (self.tree.total / B)
        return self.tree.find(mass)

    def redraw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.tree.find(rng.random(n) * self.tree.total)

    def weights(self, idx: np.ndarray, beta: float, held: int) -> np.ndarray:
        """(held P(i))^-beta / the minibatch's largest, float32 [G, B]; `held`: rows stored."""
        p = self.tree.get(idx) / self.tree.total
        w = (held * p) ** -beta
        return (w / w.max(axis=-1, keepdims=True)).astype(np.float32)

    def state_dict(self) -> dict:
        return {"priorities": self.tree.get(np.arange(self.tree.size)),
                "max_priority": self.max_priority}

    def load_state_dict(self, state: dict) -> None:
        check_priorities(state, self.tree.size)
        self.tree.tree[:] = 0.0
        self.tree.set(np.arange(self.tree.size), state["priorities"])
        self.max_priority = float(state["max_priority"])


def check_priorities(state, rows: int) -> None:
    """Saved priorities that fit a buffer of `rows` rows: ValueError naming what does not."""
    p, top = (state.get("priorities"), state.get("max_priority")) if isinstance(state, dict) \
        else (None, None)
    if not (isinstance(p, np.ndarray) and p.dtype == np.float64 and p.shape == (rows,)
            and isinstance(top, float) and np.isfinite(p).all() and (p >= 0).all()
            and np.isfinite(top) and top > 0):
        raise ValueError(f"the replay buffer's priorities must be {rows} finite non-negative "
                         "float64 values and a positive max_priority")
