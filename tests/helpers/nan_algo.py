"""A PPO whose losses turn NaN after a few updates: exercises the trainer's NaN/Inf stop.

Used through the plugin path a user would take: algo._target_=tests.helpers.nan_algo.NaNAfter3PPO
"""
from __future__ import annotations

import torch

from rl_runner.algos.ppo import PPO

GOOD_UPDATES = 3


class NaNAfter3PPO(PPO):
    """Reports policy_loss=NaN from its fourth update on."""

    def update(self, batch):
        metrics = super().update(batch)
        if self.grad_steps > GOOD_UPDATES * self._steps_per_update():
            metrics["policy_loss"] = float("nan")
        return metrics

    def _steps_per_update(self) -> int:
        return self.n_epochs * (self.n_steps * self.n_envs // self.batch_size)


class CrashAfter3PPO(NaNAfter3PPO):
    """Raises RuntimeError (a bug, not bad input) in its fourth update."""

    def update(self, batch):
        if self.grad_steps >= GOOD_UPDATES * self._steps_per_update():
            raise RuntimeError("boom in update 4")
        return super().update(batch)


class InfWeightsAfter3PPO(NaNAfter3PPO):
    """Its fourth update leaves inf weights behind while reporting finite losses (a step that
    diverges shows in the losses only one update later)."""

    def update(self, batch):
        metrics = PPO.update(self, batch)
        if self.grad_steps > GOOD_UPDATES * self._steps_per_update():
            with torch.no_grad():
                for p in self.net.parameters():
                    p.fill_(float("inf"))
        return metrics
