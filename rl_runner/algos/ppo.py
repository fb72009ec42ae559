"""PPO (Schulman et al. 2017): clipped surrogate, or the adaptive KL-penalty objective (sec. 4)."""
from __future__ import annotations

from typing import Literal

import numpy as np

from rl_runner.algos import ppo_torch
from rl_runner.algos.base import OnPolicyAlgorithm, explained_variance
from rl_runner.batches import Rollout
from rl_runner.errors import UserError
from rl_runner.params import Fraction, NonNegativeFloat, PositiveFloat, PositiveInt


class PPO(OnPolicyAlgorithm):
    """Proximal policy optimisation with GAE, minibatch epochs and an optional KL early stop."""

    name = "ppo"
    overlaps_rollouts = True  # a lagged rollout is clipped around the policy now (proximal)

    def __init__(self, *, batch_size: PositiveInt = 64, n_epochs: PositiveInt = 10,
                 gae_lambda: Fraction = 0.95, clip_coef: NonNegativeFloat = 0.2,
                 anneal_clip: bool = False, clip_vloss: bool = False,
                 kl_early_stop: PositiveFloat | None = None,
                 objective: Literal["clip", "kl_penalty"] = "clip",
                 kl_penalty_target: PositiveFloat = 0.01, kl_beta: NonNegativeFloat = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        rollout_size = self.n_steps * self.n_envs
        if batch_size > rollout_size:
            raise UserError(f"algo.batch_size={batch_size} is larger than the rollout "
                            f"(algo.n_steps x env.n_envs = {rollout_size})")
        self.batch_size, self.n_epochs, self.gae_lambda = batch_size, n_epochs, gae_lambda
        self.clip_coef, self.anneal_clip, self.clip_vloss = clip_coef, anneal_clip, clip_vloss
        self.kl_early_stop, self.objective = kl_early_stop, objective
        self.kl_penalty_target, self.kl_beta = kl_penalty_target, kl_beta

    @property
    def update_rows(self) -> int:
        return self.batch_size

    def current_clip(self) -> float:
        return self.clip_coef * (1.0 - self.progress()) if self.anneal_clip else self.clip_coef

    def update(self, batch: Rollout) -> dict[str, float]:
        if self.backend == "torch":
            return ppo_torch.update(self, batch)
        lr = self.current_lr()
        clip = self.current_clip()
        adv_TN, ret_TN = self.advantages(batch, self.gae_lambda)
        self.env_steps += adv_TN.size

        size = adv_TN.size
        obs = batch.obs.reshape(size, -1)
        actions = batch.actions.reshape(size, *batch.actions.shape[2:])
        old_logp, old_v = batch.log_probs.reshape(size), batch.values.reshape(size)
        adv, ret = adv_TN.reshape(size), ret_TN.reshape(size).astype(np.float32)
        weight = None
        if self.on_grad_step is not None:  # acted by the policy from before the last update
            old_logp, weight = self.proximal(obs, actions, old_logp)
        kl_penalty = self.objective == "kl_penalty"
        old_out = old_log_std = None
        if kl_penalty:
            old_out = self.forward(obs)[0].copy()
            old_log_std = None if self.log_std is None else self.log_std.copy()

        n_mb = size // self.batch_size
        used = n_mb * self.batch_size
        losses: list[tuple[float, float, float]] = []
        stop = False
        # one minibatch holding the whole rollout (e.g. CartPole's RL Zoo setting): shuffling
        # would only reorder it, so the epoch data are built once
        shuffle = used < size or n_mb > 1
        epoch_data = None
        for _ in range(self.n_epochs):
            if shuffle or epoch_data is None:
                idx = self.rng.permutation(size)[:used] if shuffle else slice(None)
                epoch_data = self._epoch_data(idx, n_mb, obs, actions, old_logp, old_v, ret,
                                              adv, old_out, weight)
            e_obs, e_act, e_logp, e_v, e_ret, e_adv, e_old_out = epoch_data
            for start in range(0, used, self.batch_size):
                mb = slice(start, start + self.batch_size)
                out, v = self.forward(e_obs[mb])
                logp, entropy, kl = self.head.evaluate(
                    out, self.log_std, e_act[mb], None if e_old_out is None else e_old_out[mb],
                    old_log_std)
                log_ratio = logp - e_logp[mb]
                ratio = np.exp(log_ratio)
                if self.kl_early_stop is not None:
                    approx_kl = float(((ratio - 1) - log_ratio).mean())  # k3 (Schulman 2020)
                    if approx_kl > 1.5 * self.kl_early_stop:
                        stop = True
                        break
                pg_loss, g_logp, g_kl = self._policy_loss(ratio, e_adv[mb], kl, clip)
                v_loss, g_v = self._value_loss(v, e_v[mb], e_ret[mb], clip)
                # loss = pg_loss + vf_coef * v_loss - ent_coef * mean(entropy)
                g_actor, g_log_std = self.head.backward(g_logp, -self.ent_coef / len(v), g_kl)
                self.gradient_step(g_actor, g_log_std, self.vf_coef * g_v)
                losses.append((pg_loss, v_loss, float(entropy.mean())))
            if stop:
                break

        pg_mean, v_mean, ent_mean = (np.mean(losses, axis=0).tolist() if losses
                                     else [float("nan")] * 3)
        # how far the policy moved over the whole update, measured once on the full rollout
        log_ratio = self.logp_now(obs, actions) - old_logp
        ratio_m1 = np.exp(log_ratio) - 1
        metrics = {"policy_loss": pg_mean, "value_loss": v_mean, "entropy": ent_mean,
                   "approx_kl": float((ratio_m1 - log_ratio).mean()),
                   "clipfrac": float((np.abs(ratio_m1) > clip).mean()),
                   "explained_variance": explained_variance(batch.values.ravel(), ret_TN.ravel()),
                   "learning_rate": lr, "charts/clip_coef": clip}
        if kl_penalty:
            metrics.update(self._adapt_beta(obs, actions, old_out, old_log_std))
        if self.log_std is not None:
            metrics["charts/action_std"] = float(np.exp(self.log_std).mean())
        return metrics

    def _policy_loss(self, ratio: np.ndarray, adv: np.ndarray, kl: np.ndarray | None,
                     clip: float) -> tuple[float, np.ndarray, float | None]:
        """(loss, d loss / d logp, d loss / d kl) of the clipped or the KL-penalty surrogate."""
        n = len(ratio)
        surr = ratio * adv
        if kl is not None:  # -mean(r A) + beta mean(KL)
            return (float(-surr.mean() + self.kl_beta * kl.mean()), -surr / n,
                    self.kl_beta / n)
        clipped = np.clip(ratio, 1 - clip, 1 + clip) * adv
        # -mean(min(r A, clip(r) A)); the gradient flows through r A where it is the smaller
        # (clip(r) A is constant in r outside the clip range and equals r A inside it)
        return float(-np.minimum(surr, clipped).mean()), -surr * (surr <= clipped) / n, None

    def _value_loss(self, v: np.ndarray, old_v: np.ndarray, ret: np.ndarray,
                    clip: float) -> tuple[float, np.ndarray]:
        """(loss, d loss / d v): mean squared error, or its clipped form (max of the two)."""
        err = v - ret
        if not self.clip_vloss:
            return float((err * err).mean()), err * (2.0 / len(v))
        delta = v - old_v
        err_clipped = old_v + np.clip(delta, -clip, clip) - ret
        sq, sq_clipped = err * err, err_clipped * err_clipped
        # the clipped branch has no gradient where the clip is active
        g = np.where(sq >= sq_clipped, err, err_clipped * (np.abs(delta) <= clip))
        return float(np.maximum(sq, sq_clipped).mean()), g * (2.0 / len(v))

    def proximal(self, obs: np.ndarray, actions: np.ndarray,
                 behaviour_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A rollout acted by an older policy than this one (env.envpool_async: one update
        older): the clip is taken around the policy as it is now, the proximal policy, and each
        sample weighed by proximal / acting probability (decoupled PPO, Hilton et al. 2021,
        "Batch size-invariance for policy optimization"). Clipped around the acting policy,
        the samples that the last update already moved out of the clip range give no gradient:
        ppo lunarlander lost about 50 of return at 1M steps (docs/benchmarks.md).
        Returns (log-probabilities under the proximal policy, the weights)."""
        prox = self.logp_now(obs, actions)
        return prox, np.exp(prox - behaviour_logp).astype(np.float32)

    def logp_now(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The log-probabilities of `actions` under the policy as it is now (a new array)."""
        return self.head.evaluate(self.forward(obs)[0], self.log_std, actions)[0].copy()

    def _epoch_data(self, idx, n_mb: int, obs, actions, old_logp, old_v, ret, adv,
                    old_out, weight: np.ndarray | None = None) -> tuple:
        """The rollout in this epoch's order, advantages normalised per minibatch (and weighed
        by `weight` after, where the rollout was acted by an older policy: proximal)."""
        e_adv = adv[idx].reshape(n_mb, self.batch_size)
        if self.norm_adv and self.batch_size > 1:  # all minibatches at once
            e_adv = (e_adv - e_adv.mean(1, keepdims=True)) / (e_adv.std(1, ddof=1,
                                                                        keepdims=True) + 1e-8)
        if weight is not None:
            e_adv = e_adv * weight[idx].reshape(n_mb, self.batch_size)
        return (obs[idx], actions[idx], old_logp[idx], old_v[idx], ret[idx], e_adv.reshape(-1),
                None if old_out is None else old_out[idx])

    def _adapt_beta(self, obs: np.ndarray, actions: np.ndarray, old_out: np.ndarray,
                    old_log_std: np.ndarray | None) -> dict[str, float]:
        kl = float(self.head.evaluate(self.forward(obs)[0], self.log_std, actions, old_out,
                                      old_log_std)[2].mean())
        return self.adapt_beta(kl)

    def adapt_beta(self, kl: float) -> dict[str, float]:
        """Adaptive KL penalty coefficient, PPO paper sec. 4: halve or double beta."""
        if kl > 1.5 * self.kl_penalty_target:
            self.kl_beta *= 2.0
        elif kl < self.kl_penalty_target / 1.5:
            self.kl_beta /= 2.0
        return {"kl": kl, "charts/kl_beta": self.kl_beta}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kl_beta": self.kl_beta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl_beta = state["kl_beta"]

