"""Replay of whole uint8 images: observations that are not a stack of frames (frame_buffer.py
keeps stacks, one frame per transition), and the checks both image buffers share."""
from __future__ import annotations

import numpy as np

from rl_runner.batches import ReplayBatch
from rl_runner.nstep import n_step_returns


class ImageReplay:
    """A ring of whole uint8 observations and next observations: images that are not a stack
    of frames (about 2 x the image's bytes per transition). Each add holds one step of the
    n_envs envs, so an env's next row is n_envs rows on (n-step returns, n_step > 1, which also
    keep whether each episode ended)."""

    kind = "images"
    obs_dtype = np.uint8
    min_size = 1

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_dim: int,
                 n_envs: int = 1, n_step: int = 1, gamma: float = 0.99):
        self.capacity, self.obs_shape, self.action_dim = capacity, tuple(obs_shape), action_dim
        self.n_envs, self.n_step, self.gamma = n_envs, n_step, gamma
        self.obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.next_obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.uint8)
        self.ends = np.zeros(capacity, np.uint8) if n_step > 1 else None
        self.pos = self.size = 0

    @property
    def fields(self) -> tuple[str, ...]:
        return FIELDS + (("ends",) if self.ends is not None else ())

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in self.fields)

    @property
    def rows(self) -> int:
        return self.capacity

    def add(self, obs, actions, rewards, terminated, next_obs, ends=None) -> None:
        """Append rows, overwriting the oldest once full (as ReplayBuffer.add)."""
        n, done = len(rewards), 0
        while done < n:
            k = min(n - done, self.capacity - self.pos)
            dst, src = slice(self.pos, self.pos + k), slice(done, done + k)
            self.obs[dst], self.next_obs[dst] = obs[src], next_obs[src]
            self.actions[dst] = np.reshape(actions[src], (k, -1))
            self.rewards[dst], self.terminated[dst] = rewards[src], terminated[src]
            if self.ends is not None:
                self.ends[dst] = (terminated if ends is None else ends)[src]
            self.pos, done = (self.pos + k) % self.capacity, done + k
        self.size = min(self.size + n, self.capacity)

    def newest(self, n: int) -> np.ndarray:
        return (self.pos - n + np.arange(n)) % self.capacity

    def cut(self, rows: np.ndarray | None = None) -> None:
        """The episodes of `rows` (default: the newest step's) stop there (ReplayBuffer.cut)."""
        if self.ends is not None and self.size:
            self.ends[self.newest(min(self.n_envs, self.size)) if rows is None else rows] = 1

    def drawable(self, idx: np.ndarray) -> np.ndarray:
        return idx < self.size

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0, out: ReplayBatch | None = None,
               idx: np.ndarray | None = None) -> ReplayBatch:
        if idx is None:
            idx = rng.integers(0, self.size, (n_batches, batch_size))
        out = out or self.empty_batch(n_batches, batch_size)
        last, steps = idx, None
        if self.n_step > 1:
            last, returns, steps = self.n_step_returns(idx)
        np.take(self.obs, idx, 0, out=out.obs, mode="clip")  # gathered straight into `out`
        np.take(self.actions, idx, 0, out=out.actions, mode="clip")
        np.take(self.next_obs, last, 0, out=out.next_obs, mode="clip")
        out.rewards[:] = self.rewards[idx] if steps is None else returns
        out.terminated[:] = self.terminated[last]
        return out._replace(env_steps=env_steps, steps=steps)

    def n_step_returns(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        N, C = self.n_envs, self.capacity

        def following(rows):
            return (rows + N) % C, (self.pos - 1 - rows) % C >= N

        return n_step_returns(idx, self.n_step, self.gamma, lambda r: self.rewards[r],
                              lambda r: self.ends[r] > 0, following)

    def empty_batch(self, n_batches: int, batch_size: int, alloc=np.empty) -> ReplayBatch:
        return empty_batch(n_batches, batch_size, self.obs_shape, self.action_dim, alloc)

    def state_dict(self) -> dict:
        """Views into the buffer, as FrameReplay's."""
        return {"kind": self.kind, "capacity": self.capacity, "obs_shape": list(self.obs_shape),
                "action_dim": self.action_dim, "pos": self.pos, "size": self.size,
                **{k: getattr(self, k)[:self.size] for k in self.fields}}

    def load_state_dict(self, state: dict) -> None:
        check_image_state(state, self)
        self.size, self.pos = state["size"], state["pos"]
        for k in self.fields:
            a = getattr(self, k)
            a[:self.size] = state[k]
            a[self.size:] = 0


FIELDS = ("obs", "actions", "rewards", "terminated", "next_obs")


def empty_batch(n_batches: int, batch_size: int, obs_shape: tuple, action_dim: int,
                alloc=np.empty) -> ReplayBatch:
    """Arrays for a ReplayBatch of images: uint8 observations, float32 the rest."""
    G, B = n_batches, batch_size
    return ReplayBatch(alloc((G, B, *obs_shape), np.uint8),
                       alloc((G, B, action_dim), np.float32), alloc((G, B), np.float32),
                       alloc((G, B), np.float32), alloc((G, B, *obs_shape), np.uint8), 0)


def check_plain(state, ints: tuple, arrays: dict, what: str) -> None:
    """`state` is a dict holding integers `ints` and arrays of the dtypes in `arrays`."""
    if not (isinstance(state, dict)
            and all(isinstance(state.get(k), int) and not isinstance(state.get(k), bool)
                    for k in ints)
            and all(isinstance(state.get(k), np.ndarray) and state[k].dtype == d
                    for k, d in arrays.items())
            and isinstance(state.get("obs_shape"), list)):
        kinds = ", ".join(f"{k} ({np.dtype(d)})" for k, d in arrays.items())
        raise ValueError(f"{what} is a dict of {', '.join(ints)} (integers), obs_shape (a "
                         f"list) and arrays {kinds}")


def check_image_state(state, buf: ImageReplay) -> None:
    """A saved ImageReplay that fits `buf`: ValueError naming what does not."""
    arrays = {"obs": np.uint8, "actions": np.float32, "rewards": np.float32,
              "terminated": np.uint8, "next_obs": np.uint8}
    if buf.ends is not None:
        arrays["ends"] = np.uint8
    check_plain(state, ("capacity", "action_dim", "pos", "size"), arrays,
                "an image replay buffer")
    got = (state["capacity"], tuple(state["obs_shape"]), state["action_dim"])
    want = (buf.capacity, buf.obs_shape, buf.action_dim)
    if got != want:
        raise ValueError("replay buffer of (capacity, observation shape, action dim) "
                         f"{got} does not fit {want}")
    size, pos = state["size"], state["pos"]
    shapes = {"obs": (size, *buf.obs_shape), "actions": (size, buf.action_dim),
              "rewards": (size,), "terminated": (size,), "next_obs": (size, *buf.obs_shape),
              "ends": (size,)}
    bad = [k for k in arrays if state[k].shape != shapes[k]]
    if not (0 <= size <= buf.capacity and 0 <= pos < buf.capacity
            and (size == buf.capacity or pos == size)) or bad:
        raise ValueError(f"replay buffer state does not fit: size {size}, pos {pos}"
                         f"{', shapes of ' + ', '.join(bad) if bad else ''}")
