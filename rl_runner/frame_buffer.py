"""Replay for image observations, kept as uint8, with each stacked frame stored once.

An Atari observation is the last S frames (uint8 [S, H, W], newest last), and an episode's
consecutive observations share S - 1 of them. `FrameReplay` keeps one frame per transition (the
newest of its observation) in one ring per env, and rebuilds a stack from the frames of the rows
before it at sampling, as memory-optimised DQN buffers do: about H x W bytes per transition
instead of 2 x S x H x W. What the rows before cannot give is kept beside them: the newest frame
of an episode's final observation (SAME_STEP autoreset hands it over in info["final_obs"]; the
next row belongs to the new episode), in a small store of such frames.

Every add checks that the data is a frame stack (next_obs[:-1] == obs[1:]; an episode's first
observation padded with its first frame, as gymnasium's FrameStackObservation pads); sampling
returns exactly what was added. Images that are not a stack (3 x 64 x 64 colour, channels last)
go to `ImageReplay`, which stores whole uint8 obs and next_obs.
"""
from __future__ import annotations

import numpy as np

from rl_runner.batches import ReplayBatch
from rl_runner.errors import UserError

CONTINUES, PADDED, CUT = 0, 1, 2  # a row's obs: follows the row before / starts an episode /
#                                   has older frames that no row holds (the start of a stream)
MAX_REDRAWS = 1000


class NotAFrameStack(ValueError):
    """The observations added do not shift by one frame per step: not a stack of frames."""


class FrameReplay:
    """A ring of `capacity // n_envs` steps of `n_envs` envs; a row is one transition."""

    kind = "frames"
    obs_dtype = np.uint8

    def __init__(self, capacity: int, obs_shape: tuple[int, int, int], action_dim: int,
                 n_envs: int):
        self.capacity, self.obs_shape = capacity, tuple(obs_shape)
        self.action_dim, self.n_envs = action_dim, n_envs
        S, H, W = self.obs_shape
        self.slots = T = capacity // n_envs
        if T < S + 1:
            raise UserError(f"algo.buffer_size={capacity} holds {T} steps of each of the "
                            f"{n_envs} envs; replay of {S} stacked frames needs at least "
                            f"{S + 1} (algo.buffer_size >= {(S + 1) * n_envs})")
        N = n_envs
        self.frames = np.zeros((T, N, H, W), np.uint8)  # the newest frame of each row's obs
        self.actions = np.zeros((T, N, action_dim), np.float32)
        self.rewards = np.zeros((T, N), np.float32)
        self.terminated = np.zeros((T, N), np.uint8)
        self.start = np.zeros((T, N), np.uint8)  # CONTINUES, PADDED or CUT
        # where each row's next frame is: a row of `side`, or -1: the next row's frame
        self.next_at = np.full((T, N), -1, np.int32)
        self.side = np.zeros((max(64, 2 * N), H, W), np.uint8)
        self.free = list(range(len(self.side) - 1, -1, -1))  # unused rows of `side`
        self.last_next = np.zeros((N, S, H, W), np.uint8)  # each env's newest next observation
        self.has_last = np.zeros(N, bool)
        self.pos = 0  # the next slot to write
        self.filled = 0  # slots written

    @property
    def size(self) -> int:
        """Transitions held."""
        return self.filled * self.n_envs

    @property
    def min_size(self) -> int:
        """From this size on, every env holds a row whose stack is complete."""
        return self.obs_shape[0] * self.n_envs

    @property
    def nbytes(self) -> int:
        arrays = (self.frames, self.actions, self.rewards, self.terminated, self.start,
                  self.next_at, self.side, self.last_next, self.has_last)
        return sum(a.nbytes for a in arrays)

    # ---- adding --------------------------------------------------------------------------------
    def add(self, obs_NS: np.ndarray, actions_NA: np.ndarray, rewards_N: np.ndarray,
            terminated_N: np.ndarray, next_obs_NS: np.ndarray) -> None:
        """One step of every env (row e from env e); NotAFrameStack, before anything is
        written, where the data is not a stack of frames."""
        N, S = self.n_envs, self.obs_shape[0]
        if len(obs_NS) != N:
            raise ValueError(f"frame replay adds one step of all {N} envs, not {len(obs_NS)} rows")
        if not np.array_equal(next_obs_NS[:, :-1], obs_NS[:, 1:]):
            raise NotAFrameStack("next_obs[:-1] differs from obs[1:]")
        flat = obs_NS.reshape(N, S, -1)
        continues = self.has_last & (flat == self.last_next.reshape(N, S, -1)).all((1, 2))
        padded = (flat == flat[:, -1:]).all((1, 2))
        if self.filled:  # the newest rows' next frames: the new rows' frames where they continue
            prev = (self.pos - 1) % self.slots
            self._release(self.next_at[prev, continues])
            self.next_at[prev, continues] = -1
        t = self.pos
        if self.filled == self.slots:  # overwrite the oldest step
            old = self.next_at[t]
            self._release(old[old >= 0])
        self.frames[t] = obs_NS[:, -1]
        self.actions[t] = actions_NA.reshape(N, -1)
        self.rewards[t] = rewards_N
        self.terminated[t] = terminated_N
        self.start[t] = np.where(continues, CONTINUES, np.where(padded, PADDED, CUT))
        at = self._take(N)
        self.side[at] = next_obs_NS[:, -1]
        self.next_at[t] = at
        self.last_next[:] = next_obs_NS
        self.has_last[:] = True
        self.pos = (t + 1) % self.slots
        self.filled = min(self.filled + 1, self.slots)

    def _take(self, n: int) -> np.ndarray:
        """n unused rows of the side store, which doubles when full."""
        if len(self.free) < n:
            old = len(self.side)
            self.side = np.concatenate([self.side, np.zeros_like(self.side)])
            self.free[:0] = range(2 * old - 1, old - 1, -1)
        return np.array([self.free.pop() for _ in range(n)], np.int32)

    def _release(self, rows: np.ndarray) -> None:
        self.free.extend(int(r) for r in rows)

    # ---- sampling ------------------------------------------------------------------------------
    def _walk(self, rank: np.ndarray, env: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The slots of the frames of the rows `rank` steps after the oldest (newest frame
        first), and which of them hold a whole stack (not cut by the ring's end or a CUT row)."""
        T = self.slots
        cur = (rank + (self.pos if self.filled == T else 0)) % T
        slots, valid, r = [cur], np.ones(len(cur), bool), rank
        for _ in range(self.obs_shape[0] - 1):
            kind = self.start[cur, env]
            back = kind == CONTINUES  # else PADDED: the episode's first frame repeats
            valid &= (kind != CUT) & ~(back & (r == 0))
            cur, r = (cur - back) % T, r - back
            slots.append(cur)
        return slots, valid

    def _gather(self, slots: list[np.ndarray], env: np.ndarray, obs_nS: np.ndarray,
                next_nS: np.ndarray) -> None:
        S = self.obs_shape[0]
        for k, s in enumerate(reversed(slots)):
            obs_nS[:, k] = self.frames[s, env]
        next_nS[:, :S - 1] = obs_nS[:, 1:]
        last, at = slots[0], self.next_at[slots[0], env]
        side = at >= 0
        next_nS[side, S - 1] = self.side[at[side]]
        rest = ~side
        next_nS[rest, S - 1] = self.frames[(last[rest] + 1) % self.slots, env[rest]]

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0, out: ReplayBatch | None = None) -> ReplayBatch:
        """Uniform minibatches over the rows whose stack is whole (with replacement); `out`:
        arrays to fill (pinned host memory for a GPU), else new ones."""
        n, N = n_batches * batch_size, self.n_envs
        idx = rng.integers(0, self.size, n)
        for _ in range(MAX_REDRAWS):
            slots, valid = self._walk(idx // N, idx % N)
            if valid.all():
                break
            idx[~valid] = rng.integers(0, self.size, int((~valid).sum()))
        else:
            raise ValueError("the replay buffer holds no transition whose frame stack is whole")
        out = out or self.empty_batch(n_batches, batch_size)
        env = idx % N
        obs = out.obs.reshape(n, *self.obs_shape)
        nxt = out.next_obs.reshape(n, *self.obs_shape)
        self._gather(slots, env, obs, nxt)
        out.actions.reshape(n, -1)[:] = self.actions[slots[0], env]
        out.rewards.reshape(n)[:] = self.rewards[slots[0], env]
        out.terminated.reshape(n)[:] = self.terminated[slots[0], env]
        return out._replace(env_steps=env_steps)

    def empty_batch(self, n_batches: int, batch_size: int, alloc=np.empty) -> ReplayBatch:
        return empty_batch(n_batches, batch_size, self.obs_shape, self.action_dim, alloc)

    def to_image_replay(self) -> "ImageReplay":
        """The rows whose stack is whole, oldest first, as whole observations (for data found
        not to be a stack after all)."""
        out = ImageReplay(self.capacity, self.obs_shape, self.action_dim)
        N = self.n_envs
        for a in range(0, self.size, 1024):
            idx = np.arange(a, min(a + 1024, self.size))
            slots, valid = self._walk(idx // N, idx % N)
            slots, env = [s[valid] for s in slots], idx[valid] % N
            obs = np.empty((len(env), *self.obs_shape), np.uint8)
            nxt = np.empty_like(obs)
            self._gather(slots, env, obs, nxt)
            out.add(obs, self.actions[slots[0], env], self.rewards[slots[0], env],
                    self.terminated[slots[0], env], nxt)
        return out

    # ---- state ---------------------------------------------------------------------------------
    FIELDS = ("frames", "actions", "rewards", "terminated", "start", "next_at")

    def state_dict(self) -> dict:
        """Views into the buffer, not copies (a 1M Atari buffer is 7 GB): save them before the
        next add."""
        f = self.filled
        return {"kind": self.kind, "capacity": self.capacity, "n_envs": self.n_envs,
                "obs_shape": list(self.obs_shape), "action_dim": self.action_dim,
                "pos": self.pos, "filled": f, **{k: getattr(self, k)[:f] for k in self.FIELDS},
                "side": self.side, "free": np.array(self.free, np.int64),
                "last_next": self.last_next.copy(), "has_last": self.has_last.copy()}

    def load_state_dict(self, state: dict) -> None:
        check_frame_state(state, self)
        f = self.filled = state["filled"]
        for k in self.FIELDS:
            a = getattr(self, k)
            a[:f] = state[k]
            a[f:] = -1 if k == "next_at" else 0
        self.side = state["side"].copy()
        self.free = state["free"].tolist()
        self.last_next[:] = state["last_next"]
        self.has_last[:] = state["has_last"]
        self.pos = state["pos"]


class ImageReplay:
    """A ring of whole uint8 observations and next observations: images that are not a stack
    of frames (about 2 x the image's bytes per transition)."""

    kind = "images"
    obs_dtype = np.uint8
    min_size = 1

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_dim: int):
        self.capacity, self.obs_shape, self.action_dim = capacity, tuple(obs_shape), action_dim
        self.obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.next_obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.uint8)
        self.pos = self.size = 0

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).nbytes for k in self.FIELDS)

    def add(self, obs, actions, rewards, terminated, next_obs) -> None:
        """Append rows, overwriting the oldest once full (as ReplayBuffer.add)."""
        n, done = len(rewards), 0
        while done < n:
            k = min(n - done, self.capacity - self.pos)
            dst, src = slice(self.pos, self.pos + k), slice(done, done + k)
            self.obs[dst], self.next_obs[dst] = obs[src], next_obs[src]
            self.actions[dst] = np.reshape(actions[src], (k, -1))
            self.rewards[dst], self.terminated[dst] = rewards[src], terminated[src]
            self.pos, done = (self.pos + k) % self.capacity, done + k
        self.size = min(self.size + n, self.capacity)

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0, out: ReplayBatch | None = None) -> ReplayBatch:
        idx = rng.integers(0, self.size, (n_batches, batch_size))
        out = out or self.empty_batch(n_batches, batch_size)
        for k in ("obs", "actions", "rewards", "next_obs"):  # gathered straight into `out`
            np.take(getattr(self, k), idx, 0, out=getattr(out, k), mode="clip")
        out.terminated[:] = self.terminated[idx]
        return out._replace(env_steps=env_steps)

    FIELDS = ("obs", "actions", "rewards", "terminated", "next_obs")

    def empty_batch(self, n_batches: int, batch_size: int, alloc=np.empty) -> ReplayBatch:
        return empty_batch(n_batches, batch_size, self.obs_shape, self.action_dim, alloc)

    def state_dict(self) -> dict:
        """Views into the buffer, as FrameReplay's."""
        return {"kind": self.kind, "capacity": self.capacity, "obs_shape": list(self.obs_shape),
                "action_dim": self.action_dim, "pos": self.pos, "size": self.size,
                **{k: getattr(self, k)[:self.size] for k in self.FIELDS}}

    def load_state_dict(self, state: dict) -> None:
        check_image_state(state, self)
        self.size, self.pos = state["size"], state["pos"]
        for k in self.FIELDS:
            a = getattr(self, k)
            a[:self.size] = state[k]
            a[self.size:] = 0


def empty_batch(n_batches: int, batch_size: int, obs_shape: tuple, action_dim: int,
                alloc=np.empty) -> ReplayBatch:
    """Arrays for a ReplayBatch of images: uint8 observations, float32 the rest."""
    G, B = n_batches, batch_size
    return ReplayBatch(alloc((G, B, *obs_shape), np.uint8),
                       alloc((G, B, action_dim), np.float32), alloc((G, B), np.float32),
                       alloc((G, B), np.float32), alloc((G, B, *obs_shape), np.uint8), 0)


def _plain(state, ints: tuple, arrays: dict, what: str) -> None:
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


def check_frame_state(state, buf: FrameReplay) -> None:
    """A saved FrameReplay that fits `buf`: ValueError naming what does not."""
    arrays = {"frames": np.uint8, "actions": np.float32, "rewards": np.float32,
              "terminated": np.uint8, "start": np.uint8, "next_at": np.int32, "side": np.uint8,
              "free": np.int64, "last_next": np.uint8, "has_last": np.bool_}
    _plain(state, ("capacity", "n_envs", "action_dim", "pos", "filled"), arrays,
           "a frame replay buffer")
    got = (state["capacity"], state["n_envs"], tuple(state["obs_shape"]), state["action_dim"])
    want = (buf.capacity, buf.n_envs, buf.obs_shape, buf.action_dim)
    if got != want:
        raise ValueError("replay buffer of (capacity, envs, observation shape, action dim) "
                         f"{got} does not fit {want}")
    T, N, (S, H, W), A = buf.slots, buf.n_envs, buf.obs_shape, buf.action_dim
    f, pos, side, next_at = state["filled"], state["pos"], state["side"], state["next_at"]
    shapes = {"frames": (f, N, H, W), "actions": (f, N, A), "rewards": (f, N),
              "terminated": (f, N), "start": (f, N), "next_at": (f, N),
              "last_next": (N, S, H, W), "has_last": (N,)}
    bad = [k for k, shape in shapes.items() if state[k].shape != shape]
    if not (0 <= f <= T and 0 <= pos < T and (f == T or pos == f)) or bad \
            or side.ndim != 3 or side.shape[1:] != (H, W) or state["free"].ndim != 1:
        raise ValueError(f"replay buffer state does not fit: {f} of {T} steps filled, pos {pos}"
                         f"{', shapes of ' + ', '.join(bad) if bad else ''}")
    live, free = next_at[next_at >= 0], state["free"]
    held = np.concatenate([live.astype(np.int64), free])
    if (state["terminated"] > 1).any() or (state["start"] > CUT).any() \
            or (next_at < -1).any() or len(held) != len(side) \
            or len(np.unique(held)) != len(side) or (held >= len(side)).any() \
            or (f and (next_at[(pos - 1) % T] < 0).any()):
        raise ValueError("replay buffer state does not fit: its terminated flags, episode "
                         "starts or final-frame indices are out of range")


def check_image_state(state, buf: ImageReplay) -> None:
    """A saved ImageReplay that fits `buf`: ValueError naming what does not."""
    arrays = {"obs": np.uint8, "actions": np.float32, "rewards": np.float32,
              "terminated": np.uint8, "next_obs": np.uint8}
    _plain(state, ("capacity", "action_dim", "pos", "size"), arrays, "an image replay buffer")
    got = (state["capacity"], tuple(state["obs_shape"]), state["action_dim"])
    want = (buf.capacity, buf.obs_shape, buf.action_dim)
    if got != want:
        raise ValueError("replay buffer of (capacity, observation shape, action dim) "
                         f"{got} does not fit {want}")
    size, pos = state["size"], state["pos"]
    shapes = {"obs": (size, *buf.obs_shape), "actions": (size, buf.action_dim),
              "rewards": (size,), "terminated": (size,), "next_obs": (size, *buf.obs_shape)}
    bad = [k for k, shape in shapes.items() if state[k].shape != shape]
    if not (0 <= size <= buf.capacity and 0 <= pos < buf.capacity
            and (size == buf.capacity or pos == size)) or bad:
        raise ValueError(f"replay buffer state does not fit: size {size}, pos {pos}"
                         f"{', shapes of ' + ', '.join(bad) if bad else ''}")
