"""The off-policy feeder: acts in the vector env, stores transitions, samples replay batches."""
from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np

from rl_runner.algos.contracts import OffPolicy
from rl_runner.batches import ReplayBatch
from rl_runner.envs import final_observations
from rl_runner.feeder import Episodes, Feeder
from rl_runner.rollout import EpisodeTracker

log = logging.getLogger("rl_runner")


class ReplayBuffer:
    """A fixed-capacity ring of transitions, preallocated as one float32 array.

    A row is [obs, action, reward, terminated, next_obs]: a minibatch is one fancy-index gather
    instead of one per field. Discrete actions are stored as floats (exact below 2**24).
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        a0 = obs_dim
        r = a0 + action_dim
        self._fields = {"obs": slice(0, a0), "actions": slice(a0, r), "rewards": r,
                        "terminated": r + 1, "next_obs": slice(r + 2, r + 2 + obs_dim)}
        self.width = r + 2 + obs_dim
        self.data = np.zeros((capacity, self.width), np.float32)  # pages are touched lazily
        self.pos = 0  # the next row to write
        self.size = 0  # rows filled

    def add(self, obs_ND: np.ndarray, actions_NA: np.ndarray, rewards_N: np.ndarray,
            terminated_N: np.ndarray, next_obs_ND: np.ndarray) -> None:
        """Append N transitions, overwriting the oldest rows once the buffer is full."""
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
            self.pos = (self.pos + k) % self.capacity
            done += k
        self.size = min(self.size + n, self.capacity)

    def sample(self, n_batches: int, batch_size: int, rng: np.random.Generator,
               env_steps: int = 0) -> ReplayBatch:
        """Uniform minibatches, drawn with replacement (as SB3 and CleanRL do)."""
        idx_GB = rng.integers(0, self.size, size=(n_batches, batch_size))
        rows_GBW = self.data[idx_GB]
        f = self._fields
        return ReplayBatch(rows_GBW[..., f["obs"]], rows_GBW[..., f["actions"]],
                           rows_GBW[..., f["rewards"]], rows_GBW[..., f["terminated"]],
                           rows_GBW[..., f["next_obs"]], env_steps)

    def state_dict(self) -> dict:
        return {"data": self.data[:self.size].copy(), "pos": self.pos, "size": self.size,
                "capacity": self.capacity, "width": self.width}

    def load_state_dict(self, state: dict) -> None:
        check_buffer_state(state, self.capacity, self.width)
        self.data[:state["size"]] = state["data"]
        self.data[state["size"]:] = 0.0
        self.pos, self.size = state["pos"], state["size"]


class ReplayFeeder(Feeder):
    """Steps the envs `algo.n_steps` (= train_freq) times per call, storing every transition.

    The first `algo.learning_starts` env steps take uniform random actions; updates start once
    the buffer holds that many transitions (after a resume without a saved buffer, it refills
    first). Its own RNG draws random actions and minibatch indices, so a resume is exact.
    """

    def __init__(self, envs: gym.vector.VectorEnv, algo: OffPolicy, seed: int):
        self.envs, self.n_steps, self.n_envs = envs, algo.n_steps, envs.num_envs
        self.learning_starts = algo.learning_starts
        obs_dim = int(np.prod(envs.single_observation_space.shape))
        self.buffer = ReplayBuffer(algo.buffer_size, obs_dim, algo.buffer_action_dim)
        self.rng = np.random.default_rng(seed + 20_000)
        self.restart_episodes(seed)
        self.env_steps = 0

    def restart_episodes(self, seed: int) -> None:
        self.obs, _ = self.envs.reset(seed=seed)
        self.tracker = EpisodeTracker(self.n_envs)

    def collect(self, algo: OffPolicy) -> tuple[ReplayBatch | None, Episodes]:
        """Act n_steps times; return replay minibatches for one update (None while warming up)
        and (step offset, return, length) for every episode that ended."""
        episodes: Episodes = []
        for t in range(self.n_steps):
            # the envs may reuse their observation array (copy=False): keep our own copy
            obs = np.array(self.obs, np.float32)
            if self.env_steps < algo.learning_starts:
                actions = algo.random_actions(self.n_envs, self.rng)
            else:
                actions = algo.explore(obs)
            next_obs, rewards, terminated, truncated, info = self.envs.step(algo.to_env(actions))
            dones = terminated | truncated
            stored_next = next_obs
            if dones.any():  # SAME_STEP autoreset: the true successor is in info["final_obs"]
                stored_next = np.array(next_obs, np.float32)
                stored_next[dones] = final_observations(info, dones)
            # a time limit is not death: store `terminated` only, so truncated steps bootstrap
            self.buffer.add(obs, actions, rewards, terminated, stored_next)
            self.obs = next_obs
            self.env_steps += self.n_envs
            for _, ret, length in self.tracker.step(rewards, dones):
                episodes.append(((t + 1) * self.n_envs, ret, length))
        if self.buffer.size < max(1, algo.learning_starts):
            return None, episodes
        return self.buffer.sample(algo.gradient_steps, algo.batch_size, self.rng,
                                  self.env_steps), episodes

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
        return self.buffer.state_dict()

    def load_buffer_state(self, state: dict | None, source: str) -> None:
        if state is not None:
            self.buffer.load_state_dict(state)
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
