"""Deterministic evaluation on a separate vector env with fixed episode seeds."""
from __future__ import annotations

from typing import Callable

import numpy as np

from rl_runner.envs import make_vec_env


class Evaluator:
    """Runs `n_episodes` episodes spread over up to `max_envs` envs, always from the same seeds,
    so that evaluations are comparable across a run and independent of training history.
    `kwargs` and `atari`: a config's env node through rl_runner.envs.env_options."""

    def __init__(self, env_id: str, n_episodes: int, seed: int, kwargs: dict | None = None,
                 max_envs: int = 20, atari: dict | None = None):
        self.n_envs = min(n_episodes, max_envs)
        # training=False: on Atari, whole games (all lives) and the real, unclipped score
        self.envs = make_vec_env(env_id, self.n_envs, kwargs, atari=atari, training=False)
        self.seed = seed
        self.quota = np.full(self.n_envs, n_episodes // self.n_envs)
        self.quota[: n_episodes % self.n_envs] += 1

    def run(self, policy: Callable[[np.ndarray], np.ndarray],
            stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """Env i starts from seed + i (gymnasium's vector reset) and plays its quota of
        episodes, later ones from its continued RNG; an env whose quota is done stops stepping
        (the policy sees the others' observations only), so the longest episode does not keep
        every other env playing (a trained Breakout model's 10 games: 27-35% fewer frames).
        None where `stop()` turned true before the episodes ended (a Ctrl-C: an env without a
        time limit can hold a policy that never ends an episode)."""
        envs = self.envs.envs  # SyncVectorEnv's own envs, stepped one by one
        obs = [env.reset(seed=self.seed + i)[0] for i, env in enumerate(envs)]
        finished = np.zeros(self.n_envs, np.int64)
        running = np.zeros(self.n_envs, np.float64)
        steps = np.zeros(self.n_envs, np.int64)
        returns: list[float] = []
        lengths: list[int] = []
        playing = [i for i in range(self.n_envs) if self.quota[i] > 0]
        while playing:
            if stop is not None and stop():
                return None
            actions = policy(np.stack([obs[i] for i in playing]))
            for i, action in zip(list(playing), actions):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                running[i] += float(reward)
                steps[i] += 1
                if not (terminated or truncated):
                    continue
                returns.append(float(running[i]))
                lengths.append(int(steps[i]))
                finished[i] += 1
                running[i], steps[i] = 0.0, 0
                if finished[i] < self.quota[i]:
                    obs[i], _ = envs[i].reset()
                else:
                    playing.remove(i)
        return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                "length_mean": float(np.mean(lengths)), "episodes": len(returns)}

    def close(self) -> None:
        self.envs.close()
