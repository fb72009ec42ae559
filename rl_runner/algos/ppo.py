"""PPO (Schulman et al. 2017): clipped surrogate, or the adaptive KL-penalty objective (sec. 4)."""
from __future__ import annotations

import numpy as np
import torch

from rl_runner.algos.base import OnPolicyAlgorithm, Rollout, explained_variance
from rl_runner.errors import UserError


class PPO(OnPolicyAlgorithm):
    """Proximal policy optimisation with GAE, minibatch epochs and optional target-KL stop."""

    name = "ppo"

    def __init__(self, *, batch_size: int = 64, n_epochs: int = 10, gae_lambda: float = 0.95,
                 clip_coef: float = 0.2, anneal_clip: bool = False, clip_vloss: bool = False,
                 target_kl: float | None = None, objective: str = "clip", kl_target: float = 0.01,
                 kl_beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if objective not in ("clip", "kl_penalty"):
            raise UserError(f"algo.objective={objective!r} is not known; allowed: clip, kl_penalty")
        rollout_size = self.n_steps * self.n_envs
        if batch_size > rollout_size:
            raise UserError(f"algo.batch_size={batch_size} is larger than the rollout "
                            f"(algo.n_steps x env.n_envs = {rollout_size})")
        self.batch_size, self.n_epochs, self.gae_lambda = batch_size, n_epochs, gae_lambda
        self.clip_coef, self.anneal_clip, self.clip_vloss = clip_coef, anneal_clip, clip_vloss
        self.target_kl, self.objective = target_kl, objective
        self.kl_target, self.kl_beta = kl_target, kl_beta

    def update(self, batch: Rollout) -> dict[str, float]:
        lr = self.current_lr()
        clip = self.clip_coef * (1.0 - self.progress()) if self.anneal_clip else self.clip_coef
        adv_TN, ret_TN = self.advantages(batch, self.gae_lambda)
        self.env_steps += adv_TN.size

        size = adv_TN.size
        obs = torch.from_numpy(batch.obs.reshape(size, -1))
        actions = torch.from_numpy(batch.actions.reshape(size, *batch.actions.shape[2:]))
        old_logp = torch.from_numpy(batch.log_probs.reshape(size))
        old_v = torch.from_numpy(batch.values.reshape(size))
        adv = torch.from_numpy(adv_TN.reshape(size))
        ret = torch.from_numpy(ret_TN.reshape(size).astype(np.float32))
        kl_penalty = self.objective == "kl_penalty"
        if kl_penalty:
            with torch.no_grad():
                old_out = self.net(obs)[0]
            old_log_std = None if self.net.log_std is None else self.net.log_std.detach().clone()

        n_mb = size // self.batch_size
        used = n_mb * self.batch_size
        losses: list[torch.Tensor] = []
        stop = False
        # one minibatch holding the whole rollout (e.g. CartPole's RL Zoo setting): shuffling
        # would only reorder it, so the epoch data are built once
        shuffle = used < size or n_mb > 1
        epoch_data = None
        for _ in range(self.n_epochs):
            if shuffle or epoch_data is None:
                idx = torch.randperm(size, generator=self.gen)[:used] if shuffle else slice(None)
                epoch_data = self._epoch_data(idx, n_mb, obs, actions, old_logp, old_v, ret,
                                              adv, old_out if kl_penalty else None)
            e_obs, e_act, e_logp, e_v, e_ret, e_adv, e_old_out = epoch_data
            for start in range(0, used, self.batch_size):
                mb = slice(start, start + self.batch_size)
                out, v = self.net(e_obs[mb])
                logp, entropy = self.dist.log_prob_entropy(out, self.net.log_std, e_act[mb])
                log_ratio = logp - e_logp[mb]
                ratio = log_ratio.exp()
                a = e_adv[mb]
                if self.target_kl is not None:
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - log_ratio).mean()  # k3 (Schulman 2020)
                    if approx_kl > 1.5 * self.target_kl:
                        stop = True
                        break
                if kl_penalty:
                    kl = self.dist.kl(e_old_out[mb], out, old_log_std, self.net.log_std)
                    pg_loss = -(ratio * a).mean() + self.kl_beta * kl.mean()
                else:
                    pg_loss = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()
                if self.clip_vloss:
                    v_clipped = e_v[mb] + (v - e_v[mb]).clamp(-clip, clip)
                    v_loss = torch.max((v - e_ret[mb]).pow(2),
                                       (v_clipped - e_ret[mb]).pow(2)).mean()
                else:
                    v_loss = (v - e_ret[mb]).pow(2).mean()
                loss = pg_loss + self.vf_coef * v_loss
                if self.ent_coef:  # else keep the entropy out of the graph: fewer backward nodes
                    ent = entropy.mean()
                    loss = loss - self.ent_coef * ent
                else:
                    ent = entropy.detach().mean()
                self.gradient_step(loss)
                losses.append(torch.stack((pg_loss.detach(), v_loss.detach(), ent.detach())))
            if stop:
                break

        pg_mean, v_mean, ent_mean = (torch.stack(losses).mean(0).tolist() if losses
                                     else [float("nan")] * 3)
        # how far the policy moved over the whole update, measured once on the full rollout
        with torch.no_grad():
            out, _ = self.net(obs)
            log_ratio = self.dist.log_prob_entropy(out, self.net.log_std, actions)[0] - old_logp
            ratio_m1 = log_ratio.exp() - 1
            approx_kl = float((ratio_m1 - log_ratio).mean())
            clipfrac = float((ratio_m1.abs() > clip).float().mean())
        metrics = {"policy_loss": pg_mean, "value_loss": v_mean, "entropy": ent_mean,
                   "approx_kl": approx_kl, "clipfrac": clipfrac,
                   "explained_variance": explained_variance(batch.values.ravel(), ret_TN.ravel()),
                   "learning_rate": lr, "charts/clip_coef": clip}
        if kl_penalty:
            metrics.update(self._adapt_beta(obs, old_out, old_log_std))
        if self.net.log_std is not None:
            metrics["charts/action_std"] = float(self.net.log_std.detach().exp().mean())
        return metrics

    def _epoch_data(self, idx, n_mb: int, obs, actions, old_logp, old_v, ret, adv,
                    old_out) -> tuple:
        """The rollout in this epoch's order, advantages normalised per minibatch."""
        e_adv = adv[idx].view(n_mb, self.batch_size)
        if self.norm_adv and self.batch_size > 1:  # all minibatches at once, in four ops
            e_adv = (e_adv - e_adv.mean(1, keepdim=True)) / (e_adv.std(1, keepdim=True) + 1e-8)
        return (obs[idx], actions[idx], old_logp[idx], old_v[idx], ret[idx], e_adv.view(-1),
                None if old_out is None else old_out[idx])

    @torch.no_grad()
    def _adapt_beta(self, obs: torch.Tensor, old_out: torch.Tensor,
                    old_log_std: torch.Tensor | None) -> dict[str, float]:
        """Adaptive KL penalty coefficient, PPO paper sec. 4: halve or double beta."""
        kl = float(self.dist.kl(old_out, self.net(obs)[0], old_log_std, self.net.log_std).mean())
        if kl > 1.5 * self.kl_target:
            self.kl_beta *= 2.0
        elif kl < self.kl_target / 1.5:
            self.kl_beta /= 2.0
        return {"kl": kl, "charts/kl_beta": self.kl_beta}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "kl_beta": self.kl_beta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.kl_beta = state["kl_beta"]

