"""Running statistics for observation and reward normalisation (the algorithm owns them)."""
from __future__ import annotations

import numpy as np


class RunningMeanStd:
    """Mean and variance over a stream of batches (parallel variance formula, Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"].copy(), state["var"].copy(), state["count"]


class ObsNormalizer:
    """Standardises observations with running statistics; identity when disabled."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float = 10.0):
        self.enabled = enabled
        self.clip = clip
        self.rms = RunningMeanStd(shape)

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if not self.enabled:
            return obs.astype(np.float32, copy=False)
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + 1e-8)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)


class RewardScaler:
    """Divides rewards by the running std of the discounted return (as SB3's VecNormalize).

    Applied to a whole rollout at update time, in time order, so the statistics match what an
    online wrapper would have seen.
    """

    def __init__(self, n_envs: int, gamma: float, enabled: bool, clip: float = 10.0):
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(n_envs, np.float64)

    def __call__(self, rewards_TN: np.ndarray, dones_TN: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards_TN
        for t in range(rewards_TN.shape[0]):
            self.returns = self.returns * self.gamma + rewards_TN[t]
            self.rms.update(self.returns)
            self.returns[dones_TN[t]] = 0.0
        scaled = rewards_TN / np.sqrt(self.rms.var + 1e-8)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns = state["returns"].copy()
