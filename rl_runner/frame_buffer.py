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
go to `ImageReplay` (image_replay.py), which stores whole uint8 obs and next_obs.

n-step returns (n_step > 1) read an env's later rows at sampling (nstep.py), so that the next
observation n steps on is rebuilt from the frames already held: nothing is stored twice.
"""
from __future__ import annotations

import numpy as np

from rl_runner.batches import ReplayBatch
from rl_runner.errors import UserError
from rl_runner.image_replay import ImageReplay, check_plain, empty_batch
from rl_runner.nstep import n_step_returns

FIELDS = ("frames", "actions", "rewards", "terminated", "start", "next_at")  # [T, N, ...] each
CONTINUES, PADDED, CUT = 0, 1, 2  # a row's obs: follows the row before / starts an episode /
#                                   has older frames that no row holds (the start of a stream)
MAX_REDRAWS = 1000


class NotAFrameStack(ValueError):
    """The observations added do not shift by one frame per step: not a stack of frames."""


class FrameReplay:
    """A ring of `capacity // n_envs` steps of `n_envs` envs; a row is one transition.

    Rows are numbered slot x n_envs + env (batch.indices, prioritized replay); uniform sampling
    numbers them by age instead (rank x n_envs + env, rank 0 the oldest step)."""

    kind = "frames"
    obs_dtype = np.uint8

    def __init__(self, capacity: int, obs_shape: tuple[int, int, int], action_dim: int,
                 n_envs: int, n_step: int = 1, gamma: float = 0.99):
        self.capacity, self.obs_shape = capacity, tuple(obs_shape)
        self.action_dim, self.n_envs = action_dim, n_envs
        self.n_step, self.gamma = n_step, gamma
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
        # n-step returns: whether each row's episode ended there (terminated or truncated)
        self.ends = np.zeros((T, N), np.uint8) if n_step > 1 else None
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
    def rows(self) -> int:
        return self.slots * self.n_envs

    @property
    def fields(self) -> tuple[str, ...]:
        """The per-row arrays a saved state holds."""
        return FIELDS + (("ends",) if self.ends is not None else ())

    @property
    def nbytes(self) -> int:
        arrays = [getattr(self, k) for k in self.fields]
        return sum(a.nbytes for a in arrays + [self.side, self.last_next, self.has_last])

    # ---- adding --------------------------------------------------------------------------------
    def add(self, obs_NS: np.ndarray, actions_NA: np.ndarray, rewards_N: np.ndarray,
            terminated_N: np.ndarray, next_obs_NS: np.ndarray,
            ends_N: np.ndarray | None = None) -> None:
        """One step of every env (row e from env e); NotAFrameStack, before anything is
        written, where the data is not a stack of frames. `ends_N`: whether each episode
        ended (kept for n-step returns)."""
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
        if self.ends is not None:
            self.ends[t] = terminated_N if ends_N is None else ends_N
        at = self._take(N)
        self.side[at] = next_obs_NS[:, -1]
        self.next_at[t] = at
        self.last_next[:] = next_obs_NS
        self.has_last[:] = True
        self.pos = (t + 1) % self.slots
        self.filled = min(self.filled + 1, self.slots)

    def newest(self, n: int) -> np.ndarray:
        """The row numbers of the last step added (n: its n_envs transitions)."""
        return ((self.pos - 1) % self.slots) * self.n_envs + np.arange(n)

    def cut(self) -> None:
        """The episodes in progress stop at the newest rows (ReplayBuffer.cut)."""
        if self.ends is not None and self.filled:
            self.ends[(self.pos - 1) % self.slots] = 1

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
                next_nS: np.ndarray | None) -> None:
        S = self.obs_shape[0]
        for k, s in enumerate(reversed(slots)):
            obs_nS[:, k] = self.frames[s, env]
        if next_nS is None:
            return
        next_nS[:, :S - 1] = obs_nS[:, 1:]
        last, at = slots[0], self.next_at[slots[0], env]
        side = at >= 0
        next_nS[side, S - 1] = self.side[at[side]]
        rest = ~side
        next_nS[rest, S - 1] = self.frames[(last[rest] + 1) % self.slots, env[rest]]

    def _offset(self) -> int:
        """The slot of the oldest step."""
        return self.pos if self.filled == self.slots else 0

    def aged(self, idx: np.ndarray) -> np.ndarray:
        """Row numbers (slot x n_envs + env) as age numbers (rank x n_envs + env)."""
        N = self.n_envs
        return ((idx // N - self._offset()) % self.slots) * N + idx % N

    def drawable(self, idx: np.ndarray) -> np.ndarray:
        """Which rows (row numbers) are stored with a whole stack."""
        a = self.aged(idx.reshape(-1))
        whole = (a < self.size) & self._walk(a // self.n_envs, a % self.n_envs)[1]
        return whole.reshape(idx.shape)

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0, out: ReplayBatch | None = None,
               idx: np.ndarray | None = None) -> ReplayBatch:
        """Uniform minibatches over the rows whose stack is whole (with replacement), or the
        drawable rows `idx` [G, B] (prioritized replay); `out`: arrays to fill (pinned host
        memory for a GPU), else new ones."""
        n, N = n_batches * batch_size, self.n_envs
        if idx is not None:
            aged = self.aged(idx.reshape(-1))
            slots, _ = self._walk(aged // N, aged % N)
        else:
            aged = rng.integers(0, self.size, n)
            for _ in range(MAX_REDRAWS):
                slots, valid = self._walk(aged // N, aged % N)
                if valid.all():
                    break
                aged[~valid] = rng.integers(0, self.size, int((~valid).sum()))
            else:
                raise ValueError("the replay buffer holds no transition whose frame stack is "
                                 "whole")
        out = out or self.empty_batch(n_batches, batch_size)
        env = aged % N
        obs = out.obs.reshape(n, *self.obs_shape)
        nxt = out.next_obs.reshape(n, *self.obs_shape)
        steps = None
        if self.n_step == 1:
            self._gather(slots, env, obs, nxt)
            last = slots[0]
            out.rewards.reshape(n)[:] = self.rewards[last, env]
        else:  # the next observation is the last row's, rebuilt from its own stack
            end, returns, steps = self.n_step_returns(aged)
            self._gather(slots, env, obs, None)
            end_slots, _ = self._walk(end // N, env)
            self._gather(end_slots, env, np.empty_like(obs), nxt)
            last = end_slots[0]
            out.rewards.reshape(n)[:] = returns
            steps = steps.reshape(n_batches, batch_size)
        out.actions.reshape(n, -1)[:] = self.actions[slots[0], env]
        out.terminated.reshape(n)[:] = self.terminated[last, env]
        return out._replace(env_steps=env_steps, steps=steps)

    def n_step_returns(self, aged: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """nstep.n_step_returns over age numbers: an env's next row is one step younger,
        stored where that step was written and continues the row's episode."""
        N, T, off = self.n_envs, self.slots, self._offset()

        def at(a):
            return (a // N + off) % T, a % N

        def following(a):
            nxt = a + N
            stored = nxt // N < self.filled
            return nxt, stored & (self.start[at(np.where(stored, nxt, a))] == CONTINUES)

        return n_step_returns(aged, self.n_step, self.gamma, lambda a: self.rewards[at(a)],
                              lambda a: self.ends[at(a)] > 0, following)

    def empty_batch(self, n_batches: int, batch_size: int, alloc=np.empty) -> ReplayBatch:
        return empty_batch(n_batches, batch_size, self.obs_shape, self.action_dim, alloc)

    def to_image_replay(self) -> ImageReplay:
        """The rows whose stack is whole, oldest first, as whole observations (for data found
        not to be a stack after all); their n-step sums end at each row (a row's successor
        may be among those dropped)."""
        out = ImageReplay(self.capacity, self.obs_shape, self.action_dim, self.n_envs,
                          self.n_step, self.gamma)
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
        out.cut(np.arange(out.size))
        return out

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Views into the buffer, not copies (a 1M Atari buffer is 7 GB): save them before the
        next add."""
        f = self.filled
        return {"kind": self.kind, "capacity": self.capacity, "n_envs": self.n_envs,
                "obs_shape": list(self.obs_shape), "action_dim": self.action_dim,
                "pos": self.pos, "filled": f, **{k: getattr(self, k)[:f] for k in self.fields},
                "side": self.side, "free": np.array(self.free, np.int64),
                "last_next": self.last_next.copy(), "has_last": self.has_last.copy()}

    def load_state_dict(self, state: dict) -> None:
        check_frame_state(state, self)
        f = self.filled = state["filled"]
        for k in self.fields:
            a = getattr(self, k)
            a[:f] = state[k]
            a[f:] = -1 if k == "next_at" else 0
        self.side = state["side"].copy()
        self.free = state["free"].tolist()
        self.last_next[:] = state["last_next"]
        self.has_last[:] = state["has_last"]
        self.pos = state["pos"]


def check_frame_state(state, buf: FrameReplay) -> None:
    """A saved FrameReplay that fits `buf`: ValueError naming what does not."""
    arrays = {"frames": np.uint8, "actions": np.float32, "rewards": np.float32,
              "terminated": np.uint8, "start": np.uint8, "next_at": np.int32, "side": np.uint8,
              "free": np.int64, "last_next": np.uint8, "has_last": np.bool_}
    if buf.ends is not None:
        arrays["ends"] = np.uint8
    check_plain(state, ("capacity", "n_envs", "action_dim", "pos", "filled"), arrays,
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
              "last_next": (N, S, H, W), "has_last": (N,), "ends": (f, N)}
    bad = [k for k, shape in shapes.items() if k in arrays and state[k].shape != shape]
    if not (0 <= f <= T and 0 <= pos < T and (f == T or pos == f)) or bad \
            or side.ndim != 3 or side.shape[1:] != (H, W) or state["free"].ndim != 1:
        raise ValueError(f"replay buffer state does not fit: {f} of {T} steps filled, pos {pos}"
                         f"{', shapes of ' + ', '.join(bad) if bad else ''}")
    live, free = next_at[next_at >= 0], state["free"]
    held = np.concatenate([live.astype(np.int64), free])
    if (state["terminated"] > 1).any() or (state["start"] > CUT).any() \
            or ("ends" in arrays and (state["ends"] > 1).any()) \
            or (next_at < -1).any() or len(held) != len(side) \
            or len(np.unique(held)) != len(side) or (held >= len(side)).any() \
            or (f and (next_at[(pos - 1) % T] < 0).any()):
        raise ValueError("replay buffer state does not fit: its terminated flags, episode "
                         "starts or ends or final-frame indices are out of range")
