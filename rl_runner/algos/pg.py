"""REINFORCE with a learned baseline (Williams 1992; Sutton & Barto 2018, sec. 13.4)."""
from __future__ import annotations

import numpy as np

from rl_runner.algos.base import OnPolicyAlgorithm, explained_variance
from rl_runner.algos.torch_onpolicy import actor_critic_step, optimizer_step, rollout_tensors
from rl_runner.batches import Rollout
from rl_runner.params import NonNegativeInt


class PolicyGradient(OnPolicyAlgorithm):
    """One policy-gradient step per rollout on the discounted reward-to-go minus V(s).

    The reward-to-go bootstraps from V only where a rollout or an episode is cut by a time limit;
    the baseline is fitted to it by `value_steps` extra value-only steps.
    """

    name = "pg"

    def __init__(self, *, value_steps: NonNegativeInt = 0, **kwargs):
        super().__init__(**kwargs)
        self.value_steps = value_steps

    def update(self, batch: Rollout) -> dict[str, float]:
        lr = self.current_lr()
        # GAE with lambda = 1 is exactly the reward-to-go minus the baseline
        adv_TN, ret_TN = self.advantages(batch, lam=1.0)
        self.env_steps += adv_TN.size
        size = adv_TN.size
        obs = batch.obs.reshape(size, -1)
        actions = batch.actions.reshape(size, *batch.actions.shape[2:])
        adv, ret = adv_TN.reshape(size), ret_TN.reshape(size).astype(np.float32)
        if self.norm_adv and size > 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        metrics = {"learning_rate": lr,
                   "explained_variance": explained_variance(batch.values.ravel(), ret_TN.ravel())}
        if self.backend == "torch":
            return {**self._update_torch(batch, adv, ret_TN), **metrics}

        # loss = -mean(logp A) - ent_coef mean(entropy) + vf_coef mean((V - R)^2)
        out, v = self.forward(obs)
        logp, entropy, _ = self.head.evaluate(out, self.log_std, actions)
        pg_loss, ent = float(-(logp * adv).mean()), float(entropy.mean())
        err = v - ret
        v_loss = float((err * err).mean())
        g_actor, g_log_std = self.head.backward(-adv / size, -self.ent_coef / size)
        self.gradient_step(g_actor, g_log_std, err * (2.0 * self.vf_coef / size))
        for _ in range(self.value_steps):
            err = self.forward(obs)[1] - ret
            self.gradient_step(None, None, err * (2.0 * self.vf_coef / size))
        return {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": ent, **metrics}

    def _update_torch(self, batch: Rollout, adv: np.ndarray, ret_TN: np.ndarray) -> dict:
        """The same step by torch autograd (the torch path: images, GPUs)."""
        t = rollout_tensors(self, batch, adv, ret_TN)
        losses = actor_critic_step(self, t)
        for _ in range(self.value_steps):
            optimizer_step(self, self.vf_coef * (self.net.value_out(t.obs) - t.ret).pow(2).mean())
        return dict(zip(("policy_loss", "value_loss", "entropy"), losses.tolist()))
