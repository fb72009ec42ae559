"""The on-policy feeder: steps the vector env with the algorithm's exploration policy."""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from rl_runner.algos.contracts import OnPolicy
from rl_runner.batches import Rollout
from rl_runner.envs import final_observations, game_ends
from rl_runner.feeder import Episodes, Feeder


class EpisodeTracker:
    """Per-env running return and length of the episodes in progress."""

    def __init__(self, n_envs: int):
        self.returns = np.zeros(n_envs, np.float64)
        self.lengths = np.zeros(n_envs, np.int64)

    def step(self, rewards: np.ndarray, dones: np.ndarray,
             first: int = 0) -> list[tuple[int, float, int]]:
        """Add one step of envs first, first + 1, ... (all of them by default); return (env
        index, return, length) of the episodes that just ended."""
        sl = slice(first, first + len(rewards))
        self.returns[sl] += rewards
        self.lengths[sl] += 1
        if not dones.any():
            return []
        ended = np.flatnonzero(dones) + first
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
        episodes: Episodes = []
        halves = getattr(self.envs, "halves", None)
        if halves is not None:
            return self._collect_halves(algo, halves, episodes)
        everyone = slice(0, self.n_envs)
        for t in range(self.n_steps):
            result = self.envs.step(self._act(algo, t, everyone))
            self.obs = result[0]
            self._record(algo, t, everyone, result, episodes)
        return self._finish(algo), episodes

    def _collect_halves(self, algo: OnPolicy, halves, episodes: Episodes):
        """env.envpool_async: the policy acts on one half of the envs while EnvPool steps the
        other. Each env's trajectory is what the plain loop gives it (only the order of the
        algorithm's random draws differs)."""
        (sl_a, a), (sl_b, b) = halves
        a.step_async(self._act(algo, 0, sl_a))
        for t in range(self.n_steps):
            b.step_async(self._act(algo, t, sl_b))
            self._receive(algo, t, sl_a, a.step_wait(), episodes)
            if t + 1 < self.n_steps:
                a.step_async(self._act(algo, t + 1, sl_a))
            self._receive(algo, t, sl_b, b.step_wait(), episodes)
        return self._finish(algo), episodes

    def _receive(self, algo: OnPolicy, t: int, sl: slice, result: tuple,
                 episodes: Episodes) -> None:
        if not self.obs.flags.writeable or self.obs.base is not None:
            self.obs = np.array(self.obs)  # ours to write into
        self.obs[sl] = result[0]
        self._record(algo, t, sl, result, episodes)

    def _act(self, algo: OnPolicy, t: int, sl: slice) -> np.ndarray:
        """The policy's actions for envs `sl` at step t, stored; returns them as the env takes
        them."""
        env_actions, actions, logp, values, policy_obs = algo.explore(self.obs[sl])
        if self._buf is None:
            n = self.n_envs
            self._buf = self._alloc(np.empty((n, *policy_obs.shape[1:]), policy_obs.dtype),
                                    np.empty((n, *actions.shape[1:]), actions.dtype))
        b = self._buf
        b["obs"][t, sl], b["actions"][t, sl], b["log_probs"][t, sl], b["values"][t, sl] = \
            policy_obs, actions, logp, values
        return env_actions

    def _record(self, algo: OnPolicy, t: int, sl: slice, result: tuple,
                episodes: Episodes) -> None:
        """Step t's outcome for envs `sl`: rewards, ends, the bootstrap values of time limits,
        the episodes that ended."""
        _, rewards, terminated, truncated, info = result
        b = self._buf
        b["rewards"][t, sl] = rewards
        dones = terminated | truncated
        b["dones"][t, sl] = dones
        cut = truncated & ~terminated
        b["truncated"][t, sl] = cut
        if cut.any():  # a time limit is not death: bootstrap from the final observation
            b["next_values"][t, sl.start + np.flatnonzero(cut)] = \
                algo.value(final_observations(info, cut))
        ended = self.tracker.step(rewards, dones, sl.start)
        games = game_ends(self.envs, info, sl.start)  # Atari: whole games, the real score
        for _, ret, length in (ended if games is None else games):
            episodes.append(((t + 1) * self.n_envs, ret, length))

    def _finish(self, algo: OnPolicy) -> Rollout:
        b = self._buf
        nv = b["next_values"]
        bootstrap = nv[b["truncated"]]
        nv[:-1] = b["values"][1:]
        nv[-1] = algo.value(self.obs)
        nv[b["dones"]] = 0.0
        nv[b["truncated"]] = bootstrap
        return Rollout(b["obs"], b["actions"], b["log_probs"], b["values"], b["rewards"],
                       b["dones"], nv)

    def state_dict(self) -> dict:
        return {"obs": self.obs.copy(), "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.obs = state["obs"].copy()
        self.tracker.load_state_dict(state["tracker"])
