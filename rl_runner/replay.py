"""The off-policy feeder: acts in the vector env, stores transitions, samples replay batches."""
from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos.contracts import OffPolicy
from rl_runner.batches import ReplayBatch
from rl_runner.encoders import chw_shape, is_image
from rl_runner.envs import final_observations, game_ends
from rl_runner.feeder import Episodes, Feeder
from rl_runner.frame_buffer import MAX_REDRAWS, FrameReplay, ImageReplay, NotAFrameStack
from rl_runner.nstep import n_step_returns
from rl_runner.rollout import EpisodeTracker
from rl_runner.sum_tree import Priorities

log = logging.getLogger("rl_runner")


class ReplayBuffer:
    """A fixed-capacity ring of transitions, preallocated as one float32 array.

    A row is [obs, action, reward, terminated, next_obs]: a minibatch is one fancy-index gather
    instead of one per field. Discrete actions are stored as floats (exact below 2**24). With
    n-step returns (n_step > 1) a row also holds whether its episode ended there (terminated or
    truncated), and a sampled row reads its env's next n - 1 rows, n_envs rows further on each.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, n_envs: int = 1,
                 n_step: int = 1, gamma: float = 0.99):
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        self.n_envs, self.n_step, self.gamma = n_envs, n_step, gamma
        a0 = obs_dim
        r = a0 + action_dim
        self._fields = {"obs": slice(0, a0), "actions": slice(a0, r), "rewards": r,
                        "terminated": r + 1, "next_obs": slice(r + 2, r + 2 + obs_dim)}
        self.width = r + 2 + obs_dim
        if n_step > 1:
            self._fields["ends"] = self.width
            self.width += 1
        self.data = np.zeros((capacity, self.width), np.float32)  # pages are touched lazily
        self.obs_dtype, self.min_size = np.float32, 1
        self.pos = 0  # the next row to write
        self.size = 0  # rows filled

    @property
    def rows(self) -> int:
        """Row numbers are 0 .. rows - 1 (batch.indices)."""
        return self.capacity

    def add(self, obs_ND: np.ndarray, actions_NA: np.ndarray, rewards_N: np.ndarray,
            terminated_N: np.ndarray, next_obs_ND: np.ndarray,
            ends_N: np.ndarray | None = None) -> None:
        """Append N transitions, overwriting the oldest rows once the buffer is full; `ends_N`:
        whether each episode ended (terminated or truncated; kept for n-step returns)."""
        n = len(rewards_N)
        f = self._fields
        done = 0
        while done < n:  # at most two chunks: up to the end of the array, then from row 0
            k = min(n - done, self.capacity - self.pos)
            rows, src = self.data[self.pos:self.pos + k], slice(done, done + k)
            rows[:, f["obs"]] = obs_ND[src].reshape(k, -1)
            rows[:, f["actions"]] = actions_NA[src].reshape(k, -1)
            rows[:, f["rewards"]] = rewards_N[src]
            rows[:, f["terminated"]] = terminated_N[src]
            rows[:, f["next_obs"]] = next_obs_ND[src].reshape(k, -1)
            if "ends" in f:
                rows[:, f["ends"]] = (terminated_N if ends_N is None else ends_N)[src]
            self.pos = (self.pos + k) % self.capacity
            done += k
        self.size = min(self.size + n, self.capacity)

    def newest(self, n: int) -> np.ndarray:
        """The row numbers of the last n transitions added."""
        return (self.pos - n + np.arange(n)) % self.capacity

    def cut(self) -> None:
        """The episodes in progress stop here (fresh ones follow): n-step sums end at the newest
        rows, which bootstrap from their stored next observation."""
        if "ends" in self._fields and self.size:
            self.data[self.newest(min(self.n_envs, self.size)), self._fields["ends"]] = 1.0

    def drawable(self, idx: np.ndarray) -> np.ndarray:
        return idx < self.size

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0, out: ReplayBatch | None = None,
               idx: np.ndarray | None = None) -> ReplayBatch:
        """Uniform minibatches, drawn with replacement (as SB3 and CleanRL do), or the rows
        `idx` [G, B] (prioritized replay); `out`: arrays to copy the fields into (pinned host
        memory for a GPU), else views of one gather."""
        idx_GB = rng.integers(0, self.size, size=(n_batches, batch_size)) if idx is None else idx
        rows_GBW = self.data[idx_GB]
        f = self._fields
        if self.n_step == 1:
            batch = ReplayBatch(rows_GBW[..., f["obs"]], rows_GBW[..., f["actions"]],
                                rows_GBW[..., f["rewards"]], rows_GBW[..., f["terminated"]],
                                rows_GBW[..., f["next_obs"]], env_steps)
        else:
            last, returns, steps = self.n_step_returns(idx_GB)
            last_GBW = self.data[last]
            batch = ReplayBatch(rows_GBW[..., f["obs"]], rows_GBW[..., f["actions"]], returns,
                                last_GBW[..., f["terminated"]], last_GBW[..., f["next_obs"]],
                                env_steps, steps=steps)
        if out is None:
            return batch
        for dst, src in zip(out[:5], batch[:5]):
            np.copyto(dst, src)
        return out._replace(env_steps=env_steps, steps=batch.steps)

    def n_step_returns(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """nstep.n_step_returns over this ring: an env's next row is n_envs rows on, stored
        where that many rows or more were written after it."""
        N, C, f = self.n_envs, self.capacity, self._fields

        def following(rows):
            return (rows + N) % C, (self.pos - 1 - rows) % C >= N

        return n_step_returns(idx, self.n_step, self.gamma, lambda r: self.data[r, f["rewards"]],
                              lambda r: self.data[r, f["ends"]] > 0, following)

    def empty_batch(self, n_batches: int, batch_size: int, alloc=np.empty) -> ReplayBatch:
        """Arrays a batch can be sampled into (`out`), from alloc(shape, dtype)."""
        G, B, D, A = n_batches, batch_size, self.obs_dim, self.action_dim
        return ReplayBatch(alloc((G, B, D), np.float32), alloc((G, B, A), np.float32),
                           alloc((G, B), np.float32), alloc((G, B), np.float32),
                           alloc((G, B, D), np.float32), 0)

    def state_dict(self) -> dict:
        return {"data": self.data[:self.size].copy(), "pos": self.pos, "size": self.size,
                "capacity": self.capacity, "width": self.width}

    def load_state_dict(self, state: dict) -> None:
        check_buffer_state(state, self.capacity, self.width)
        self.data[:state["size"]] = state["data"]
        self.data[state["size"]:] = 0.0
        self.pos, self.size = state["pos"], state["size"]


def make_buffer(space: gym.Space, capacity: int, action_dim: int, n_envs: int,
                n_step: int = 1, gamma: float = 0.99):
    """Image observations stay uint8: a stack of frames channels first (Atari's 4 x 84 x 84)
    stores each frame once (FrameReplay), other images whole (ImageReplay); vectors go into
    float32 rows (ReplayBuffer). n_step > 1: batches of n-step returns discounted by gamma."""
    if not is_image(space):
        return ReplayBuffer(capacity, int(np.prod(space.shape)), action_dim, n_envs, n_step,
                            gamma)
    if chw_shape(space.shape) == tuple(space.shape):
        return FrameReplay(capacity, space.shape, action_dim, n_envs, n_step, gamma)
    return ImageReplay(capacity, space.shape, action_dim, n_envs, n_step, gamma)


def pinned(shape: tuple, dtype) -> np.ndarray:
    """A numpy view of page-locked host memory (CUDA copies from it run asynchronously)."""
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                       pin_memory=True).numpy()


class PinnedBatch:
    """The pinned arrays replay batches are sampled into for a learner on a GPU. One set is
    enough: `update` reads its metrics back (a sync) before the feeder samples again."""

    def __init__(self):
        self.out: ReplayBatch | None = None

    def arrays(self, buffer, n_batches: int, batch_size: int) -> ReplayBatch:
        if self.out is None or self.out.rewards.shape != (n_batches, batch_size):
            self.out = buffer.empty_batch(n_batches, batch_size, pinned)
        return self.out


class ReplayFeeder(Feeder):
    """Steps the envs `algo.n_steps` (= train_freq) times per call, storing every transition.

    The first `algo.learning_starts` env steps take uniform random actions; updates start once
    the buffer holds that many transitions (after a resume without a saved buffer, it refills
    first). Its own RNG draws random actions and minibatch indices, so a resume is exact.
    Batches for an algorithm on a CUDA device are sampled into pinned host memory.

    What else the batches hold is the algorithm's choice (contracts.OffPolicy): n-step returns
    (algo.n_step, read by the buffer at sampling) and prioritized replay (algo.prioritized: the
    feeder keeps the rows' priorities beside the buffer, and takes the algorithm's new ones
    before it samples or saves).
    """

    def __init__(self, envs: gym.vector.VectorEnv, algo: OffPolicy, seed: int):
        self.envs, self.n_steps, self.n_envs = envs, algo.n_steps, envs.num_envs
        self.learning_starts = algo.learning_starts
        self.buffer = make_buffer(envs.single_observation_space, algo.buffer_size,
                                  algo.buffer_action_dim, self.n_envs, algo.n_step, algo.gamma)
        self.algo = algo  # its new priorities are taken before the buffer is saved
        self.priorities = Priorities(self.buffer.rows, algo.per_alpha) if algo.prioritized \
            else None
        # Algorithm.device (the contract's: the CPU unless the class takes a device)
        self.pinned = PinnedBatch() if algo.device.type == "cuda" else None
        self.rng = np.random.default_rng(seed + 20_000)
        self.restart_episodes(seed)
        self.env_steps = 0

    def restart_episodes(self, seed: int) -> None:
        """Fresh episodes; those in the buffer end where they were cut (n-step sums)."""
        self.buffer.cut()
        self.obs, _ = self.envs.reset(seed=seed)
        self.tracker = EpisodeTracker(self.n_envs)

    def collect(self, algo: OffPolicy) -> tuple[ReplayBatch | None, Episodes]:
        """Act n_steps times; return replay minibatches for one update (None while warming up)
        and (step offset, return, length) for every episode that ended."""
        episodes: Episodes = []
        self._take_priorities(algo)
        for t in range(self.n_steps):
            # the envs may reuse their observation array (copy=False): keep our own copy
            obs = np.array(self.obs, self.buffer.obs_dtype)
            if self.env_steps < algo.learning_starts:
                actions = algo.random_actions(self.n_envs, self.rng)
            else:
                actions = algo.explore(obs)
            next_obs, rewards, terminated, truncated, info = self.envs.step(algo.to_env(actions))
            dones = terminated | truncated
            stored_next = next_obs
            if dones.any():  # SAME_STEP autoreset: the true successor is in info["final_obs"]
                stored_next = np.array(next_obs, self.buffer.obs_dtype)
                stored_next[dones] = final_observations(info, dones)
            # a time limit is not death: `terminated` apart, so truncated steps bootstrap
            self._add(obs, actions, rewards, terminated, stored_next, dones)
            self.obs = next_obs
            self.env_steps += self.n_envs
            ended = self.tracker.step(rewards, dones)
            games = game_ends(self.envs, info)  # Atari: whole games, the real score
            for _, ret, length in (ended if games is None else games):
                episodes.append(((t + 1) * self.n_envs, ret, length))
        if self.buffer.size < max(1, algo.learning_starts, self.buffer.min_size):
            return None, episodes
        return self._sample(algo.gradient_steps, algo.batch_size), episodes

    def _add(self, *transition) -> None:
        try:
            self.buffer.add(*transition)
        except NotAFrameStack:  # images whose first axis is not a stack of frames
            log.info("image observations %s are not a stack of frames: the replay buffer keeps "
                     "whole observations (2 x %d bytes a transition)", self.buffer.obs_shape,
                     np.prod(self.buffer.obs_shape))
            self.buffer = self.buffer.to_image_replay()
            if self.priorities is not None:  # other row numbers: start them afresh
                self.priorities = Priorities(self.buffer.rows, self.priorities.alpha)
                self.priorities.added(np.arange(self.buffer.size))
            self.buffer.add(*transition)
        if self.priorities is not None:
            self.priorities.added(self.buffer.newest(self.n_envs))

    def _sample(self, n_batches: int, batch_size: int) -> ReplayBatch:
        out = None if self.pinned is None else self.pinned.arrays(self.buffer, n_batches,
                                                                  batch_size)
        if self.priorities is None:
            return self.buffer.sample(n_batches, batch_size, self.rng, self.env_steps, out)
        idx = self._draw(n_batches, batch_size)
        batch = self.buffer.sample(n_batches, batch_size, self.rng, self.env_steps, out, idx)
        weights = self.priorities.weights(idx, self.algo.per_beta(self.env_steps),
                                          self.buffer.size)
        return batch._replace(weights=weights, indices=idx)

    def _draw(self, n_batches: int, batch_size: int) -> np.ndarray:
        """Rows by priority; a row drawn without a whole frame stack (it never gets one) drops
        to priority 0 and is drawn again."""
        idx = self.priorities.draw((n_batches, batch_size), self.rng)
        for _ in range(MAX_REDRAWS):
            bad = ~self.buffer.drawable(idx)
            if not bad.any():
                return idx
            self.priorities.drop(idx[bad])
            idx[bad] = self.priorities.redraw(int(bad.sum()), self.rng)
        raise ValueError("the replay buffer holds no transition whose frame stack is whole")

    def _take_priorities(self, algo: OffPolicy) -> None:
        new = algo.take_priorities() if self.priorities is not None else None
        if new is not None:
            self.priorities.update(*new)

    def state_dict(self) -> dict:
        """Everything but the buffer, which the trainer saves only when asked (it is large)."""
        return {"obs": np.array(self.obs), "tracker": self.tracker.state_dict(),
                "rng": self.rng.bit_generator.state, "env_steps": self.env_steps}

    def load_state_dict(self, state: dict) -> None:
        self.obs = np.array(state["obs"])
        self.tracker.load_state_dict(state["tracker"])
        self.rng.bit_generator.state = state["rng"]
        self.env_steps = state["env_steps"]

    def buffer_state(self) -> dict:
        """The buffer's state; with prioritized replay, the rows' priorities too (the
        algorithm's newest taken first), under "priorities"."""
        state = self.buffer.state_dict()
        if self.priorities is not None:
            self._take_priorities(self.algo)
            state["priorities"] = self.priorities.state_dict()
        return state

    def load_buffer_state(self, state: dict | None, source: str) -> None:
        if state is not None:
            kind = state.get("kind") if isinstance(state, dict) else None
            if kind == "images" and isinstance(self.buffer, FrameReplay):  # converted then
                b = self.buffer
                self.buffer = ImageReplay(b.capacity, b.obs_shape, b.action_dim, b.n_envs,
                                          b.n_step, b.gamma)
            if kind != getattr(self.buffer, "kind", None):
                raise ValueError(f"a replay buffer of {kind or 'float rows'} does not fit this "
                                 f"run's {getattr(self.buffer, 'kind', 'float rows')}")
            if isinstance(state, dict):  # a copy: the checkpoint keeps its own
                state = dict(state)
            priorities = state.pop("priorities", None) if isinstance(state, dict) else None
            if (priorities is None) != (self.priorities is None):
                raise ValueError("the replay buffer's priorities are " + (
                    "missing (this run has algo.prioritized=true)" if priorities is None else
                    "there, but this run has no prioritized replay"))
            self.buffer.load_state_dict(state)
            if self.priorities is not None:
                self.priorities = Priorities(self.buffer.rows, self.priorities.alpha)
                self.priorities.load_state_dict(priorities)
            return
        log.warning("%s holds no replay buffer (trainer.save_replay_buffer=false when it was "
                    "saved): the buffer starts empty and updates wait until it holds "
                    "algo.learning_starts=%d transitions, so numbers will differ from an "
                    "uninterrupted run", source, max(1, self.learning_starts))


def check_buffer_state(state, capacity: int, width: int) -> None:
    """A saved buffer (state_dict) that fits a buffer of `capacity` rows of `width`: ValueError
    naming what does not."""
    ints = ("capacity", "width", "size", "pos")
    if not (isinstance(state, dict) and isinstance(state.get("data"), np.ndarray)
            and all(isinstance(state.get(k), int) and not isinstance(state.get(k), bool)
                    for k in ints)):
        raise ValueError("a replay buffer is a dict of data (an array) and capacity, width, size "
                         "and pos (integers)")
    if (state["capacity"], state["width"]) != (capacity, width):
        raise ValueError(f"replay buffer of capacity {state['capacity']} x {state['width']} "
                         f"does not fit {capacity} x {width}")
    size, pos, data = state["size"], state["pos"], state["data"]
    if not (0 <= size <= capacity and 0 <= pos < capacity and data.shape == (size, width)
            and data.dtype == np.float32 and (size == capacity or pos == size)):
        raise ValueError(f"replay buffer state does not fit: size {size}, pos {pos}, data "
                         f"{data.shape} {data.dtype}")
