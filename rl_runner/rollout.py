"""The on-policy feeder: steps the vector env with the algorithm's exploration policy."""
from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

import gymnasium as gym
import numpy as np

from rl_runner.algos.contracts import OnPolicy
from rl_runner.batches import Rollout
from rl_runner.envs import final_observations, game_ends
from rl_runner.feeder import Episodes, Feeder


T = TypeVar("T")


def finish(steps: Generator[None, None, T]) -> T:
    """Run a step-by-step generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class EpisodeTracker:
    """Per-env running return and length of the episodes in progress."""

    def __init__(self, n_envs: int):
        self.returns = np.zeros(n_envs, np.float64)
        self.lengths = np.zeros(n_envs, np.int64)

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> list[tuple[int, float, int]]:
        """Add one step; return (env index, return, length) of the episodes that just ended."""
        self.returns += rewards
        self.lengths += 1
        if not dones.any():
            return []
        ended = np.flatnonzero(dones)
        out = [(int(i), float(self.returns[i]), int(self.lengths[i])) for i in ended]
        self.returns[ended] = 0.0
        self.lengths[ended] = 0
        return out

    def state_dict(self) -> dict:
        return {"returns": self.returns.copy(), "lengths": self.lengths.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.returns, self.lengths = state["returns"].copy(), state["lengths"].copy()


class RolloutCollector(Feeder):
    """Collects n_steps x n_envs transitions into preallocated arrays.

    Episodes that end by a time limit keep V(final observation) for bootstrapping; the
    observation the env returns in that step already belongs to the next episode.
    """

    def __init__(self, envs: gym.vector.VectorEnv, n_steps: int, seed: int):
        self.envs, self.n_steps, self.n_envs = envs, n_steps, envs.num_envs
        self.restart_episodes(seed)
        self._buf: dict[str, np.ndarray] | None = None

    def restart_episodes(self, seed: int) -> None:
        self.obs, _ = self.envs.reset(seed=seed)
        self.tracker = EpisodeTracker(self.n_envs)

    def _alloc(self, policy_obs: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        T, N = self.n_steps, self.n_envs
        # the dtype the algorithm hands over: float32 vectors, or uint8 images (a quarter of
        # the memory; the CNN scales them)
        return {"obs": np.zeros((T, *policy_obs.shape), policy_obs.dtype),
                "actions": np.zeros((T, *actions.shape), actions.dtype),
                **{k: np.zeros((T, N), np.float32)
                   for k in ("log_probs", "values", "rewards", "next_values")},
                "dones": np.zeros((T, N), bool), "truncated": np.zeros((T, N), bool)}

    def collect(self, algo: OnPolicy) -> tuple[Rollout, Episodes]:
        """One rollout, plus (step offset, return, length) for every episode that ended in it."""
        return finish(self._rollout(algo))

    def _send(self, actions: np.ndarray) -> None:
        """Start the envs' step (the overlapped collector's envs step while the caller works)."""
        self._actions = actions

    def _wait(self) -> tuple:
        """The step's results: (obs, rewards, terminated, truncated, info)."""
        return self.envs.step(self._actions)

    def _rollout(self, algo: OnPolicy) -> Generator[None, None, tuple[Rollout, Episodes]]:
        """collect, step by step: yields once the actions of a step are sent, returns what
        collect returns."""
        episodes: Episodes = []
        for t in range(self.n_steps):
            env_actions, actions, logp, values, policy_obs = algo.explore(self.obs)
            if self._buf is None:
                self._buf = self._alloc(policy_obs, actions)
            b = self._buf
            b["obs"][t], b["actions"][t], b["log_probs"][t], b["values"][t] = \
                policy_obs, actions, logp, values
            self._send(env_actions)
            yield
            self.obs, rewards, terminated, truncated, info = self._wait()
            b["rewards"][t] = rewards
            dones = terminated | truncated
            b["dones"][t] = dones
            cut = truncated & ~terminated
            b["truncated"][t] = cut
            if cut.any():  # a time limit is not death: bootstrap from the final observation
                b["next_values"][t][cut] = algo.value(final_observations(info, cut))
            ended = self.tracker.step(rewards, dones)
            games = game_ends(self.envs, info)  # Atari: whole games, the real score
            for _, ret, length in (ended if games is None else games):
                episodes.append(((t + 1) * self.n_envs, ret, length))
        b = self._buf
        nv = b["next_values"]
        bootstrap = nv[b["truncated"]]
        nv[:-1] = b["values"][1:]
        nv[-1] = algo.value(self.obs)
        nv[b["dones"]] = 0.0
        nv[b["truncated"]] = bootstrap
        return Rollout(b["obs"], b["actions"], b["log_probs"], b["values"], b["rewards"],
                       b["dones"], nv), episodes

    def state_dict(self) -> dict:
        return {"obs": self.obs.copy(), "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.obs = state["obs"].copy()
        self.tracker.load_state_dict(state["tracker"])
