"""A2C: synchronous advantage actor-critic (Mnih et al. 2016), as SB3's A2C takes it."""
from __future__ import annotations

import numpy as np

from rl_runner.algos.base import OnPolicyAlgorithm, explained_variance
from rl_runner.algos.torch_onpolicy import actor_critic_step, rollout_tensors
from rl_runner.batches import Rollout
from rl_runner.errors import UserError
from rl_runner.optim import FlatParams, FlatRMSprop
from rl_runner.params import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt

LOSSES = ("policy_loss", "value_loss", "entropy")


class A2C(OnPolicyAlgorithm):
    """One gradient step per rollout of n_steps x n_envs, on the whole rollout:

        loss = -mean(logp(a|s) A) - ent_coef mean(entropy) + vf_coef mean((V(s) - R)^2)

    with A and R by GAE(gae_lambda) (1.0: the n-step returns bootstrapped from V at the
    rollout's end, A3C's estimate). RMSprop (alpha 0.99) as the paper and SB3 use it, or Adam.
    Short rollouts make the per-update cost the cost of a run: the numpy kernels take the step
    on the CPU for MLPs, torch autograd for a CNN or a GPU; both give the same step.
    """

    name = "a2c"

    def __init__(self, *, lr: NonNegativeFloat = 7e-4, n_steps: PositiveInt = 5,
                 gae_lambda: Fraction = 1.0, norm_adv: bool = False,
                 use_rms_prop: bool = True, rms_prop_eps: PositiveFloat = 1e-5,
                 rms_prop_tf_like: bool = False, **kwargs):
        if rms_prop_tf_like and not use_rms_prop:
            raise UserError("algo.rms_prop_tf_like=true is a form of RMSprop, but "
                            "algo.use_rms_prop=false picks Adam; allowed with Adam: false")
        # read by make_optimizer, which the base constructor calls
        self.use_rms_prop, self.rms_prop_eps = use_rms_prop, rms_prop_eps
        self.rms_prop_tf_like = rms_prop_tf_like
        super().__init__(lr=lr, n_steps=n_steps, norm_adv=norm_adv, **kwargs)
        self.gae_lambda = gae_lambda

    def make_optimizer(self, lr: float) -> FlatParams:
        """RMSprop with alpha 0.99 and eps rms_prop_eps (SB3's A2C), else Adam with eps 1e-5
        (SB3's policies' Adam, the base's)."""
        if not self.use_rms_prop:
            return super().make_optimizer(lr)
        return FlatRMSprop(self.net.parameters(), lr=lr, alpha=0.99, eps=self.rms_prop_eps,
                           tf_like=self.rms_prop_tf_like)

    def update(self, batch: Rollout) -> dict[str, float]:
        lr = self.current_lr()
        adv_TN, ret_TN = self.advantages(batch, self.gae_lambda)
        self.env_steps += adv_TN.size
        size = adv_TN.size
        adv, ret = adv_TN.reshape(size), ret_TN.reshape(size).astype(np.float32)
        if self.norm_adv and size > 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        if self.backend == "torch":
            losses = self._update_torch(batch, adv, ret_TN)
        else:
            losses = self._update_numpy(batch, adv, ret)
        metrics = {**losses, "learning_rate": lr,
                   "explained_variance": explained_variance(batch.values.ravel(), ret)}
        std = self.host_log_std()
        if std is not None:
            metrics["charts/action_std"] = float(np.exp(std).mean())
        return metrics

    def _update_numpy(self, batch: Rollout, adv: np.ndarray, ret: np.ndarray) -> dict:
        """The step by the numpy kernels: the loss's gradients w.r.t. the network's outputs,
        backpropagated by MLPKernel into the optimizer's flat gradient."""
        size = len(adv)
        obs = batch.obs.reshape(size, -1)
        actions = batch.actions.reshape(size, *batch.actions.shape[2:])
        out, v = self.forward(obs)
        logp, entropy, _ = self.head.evaluate(out, self.log_std, actions)
        err = v - ret
        losses = (float(-(logp * adv).mean()), float((err * err).mean()), float(entropy.mean()))
        g_actor, g_log_std = self.head.backward(-adv / size, -self.ent_coef / size)
        self.gradient_step(g_actor, g_log_std, err * (2.0 * self.vf_coef / size))
        return dict(zip(LOSSES, losses))

    def _update_torch(self, batch: Rollout, adv: np.ndarray, ret_TN: np.ndarray) -> dict:
        """The same step by torch autograd (the torch path: images, GPUs); one read-back."""
        return dict(zip(LOSSES, actor_critic_step(self, rollout_tensors(self, batch, adv,
                                                                         ret_TN)).tolist()))

