"""REINFORCE with a learned baseline (Williams 1992; Sutton & Barto 2018, sec. 13.4)."""
from __future__ import annotations

import numpy as np
import torch

from rl_runner.algos.base import OnPolicyAlgorithm, Rollout, explained_variance


class PolicyGradient(OnPolicyAlgorithm):
    """One policy-gradient step per rollout on the discounted reward-to-go minus V(s).

    The reward-to-go bootstraps from V only where a rollout or an episode is cut by a time limit;
    the baseline is fitted to it by `value_epochs` extra value-only steps.
    """

    name = "pg"

    def __init__(self, *, value_epochs: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.value_epochs = value_epochs

    def update(self, batch: Rollout) -> dict[str, float]:
        lr = self.current_lr()
        # GAE with lambda = 1 is exactly the reward-to-go minus the baseline
        adv_TN, ret_TN = self.advantages(batch, lam=1.0)
        self.env_steps += adv_TN.size
        size = adv_TN.size
        obs = torch.from_numpy(batch.obs.reshape(size, -1))
        actions = torch.from_numpy(batch.actions.reshape(size, *batch.actions.shape[2:]))
        adv = torch.from_numpy(adv_TN.reshape(size))
        ret = torch.from_numpy(ret_TN.reshape(size).astype(np.float32))
        if self.norm_adv and size > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)

        out, v = self.net(obs)
        logp, entropy = self.dist.log_prob_entropy(out, self.net.log_std, actions)
        pg_loss = -(logp * adv).mean()
        v_loss = (v - ret).pow(2).mean()
        ent = entropy.mean()
        self.gradient_step(pg_loss - self.ent_coef * ent + self.vf_coef * v_loss)
        for _ in range(self.value_epochs):
            self.gradient_step(self.vf_coef * (self.net(obs)[1] - ret).pow(2).mean())
        return {"policy_loss": pg_loss.item(), "value_loss": v_loss.item(),
                "entropy": ent.item(), "learning_rate": lr,
                "explained_variance": explained_variance(batch.values.ravel(), ret_TN.ravel())}
