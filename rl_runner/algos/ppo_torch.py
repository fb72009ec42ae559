"""PPO's update on the torch path: the losses of ppo.py written in torch, autograd for the
gradients; the same minibatch order (the algorithm's numpy RNG), the same metrics.

Minibatches are gathered on the device; the losses stay tensors until one read-back per update
(plus one per minibatch with kl_early_stop, whose decision needs the number).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rl_runner.algos.base import explained_variance
from rl_runner.algos.torch_onpolicy import optimizer_step, rollout_tensors
from rl_runner.batches import Rollout

if TYPE_CHECKING:
    from rl_runner.algos.ppo import PPO


def policy_loss(algo: PPO, ratio: torch.Tensor, adv: torch.Tensor, kl: torch.Tensor | None,
                clip: float) -> torch.Tensor:
    """-mean(min(r A, clip(r, 1 - eps, 1 + eps) A)) (PPO paper eq. 7), or with the KL penalty
    -mean(r A) + beta mean(KL(old || new)) (eq. 8)."""
    if kl is not None:
        return -(ratio * adv).mean() + algo.kl_beta * kl.mean()
    return -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()


def value_loss(algo: PPO, v: torch.Tensor, old_v: torch.Tensor, ret: torch.Tensor,
               clip: float) -> torch.Tensor:
    """Mean squared error, or with clip_vloss the larger of it and the error of the value moved
    at most clip from its rollout value."""
    sq = (v - ret).pow(2)
    if not algo.clip_vloss:
        return sq.mean()
    v_clipped = old_v + (v - old_v).clamp(-clip, clip)
    return torch.max(sq, (v_clipped - ret).pow(2)).mean()


def update(algo: PPO, batch: Rollout) -> dict[str, float]:
    lr = algo.current_lr()
    clip = algo.current_clip()
    adv_TN, ret_TN = algo.advantages(batch, algo.gae_lambda)
    algo.env_steps += adv_TN.size
    size = adv_TN.size
    t = rollout_tensors(algo, batch, adv_TN, ret_TN)
    net, dist, bs = algo.net, algo.net.dist, algo.batch_size
    weight = None
    if algo.on_grad_step is not None:  # acted by the policy from before the last update
        with torch.no_grad():  # the clip around the policy now (PPO.proximal)
            prox = dist.log_prob_entropy(net.policy_out(t.obs), net.log_std, t.actions)[0]
        weight = (prox - t.old_logp).exp()
        t = t._replace(old_logp=prox)
    kl_penalty = algo.objective == "kl_penalty"
    old_out = old_log_std = None
    if kl_penalty:
        with torch.no_grad():
            old_out = net.policy_out(t.obs)
        old_log_std = None if net.log_std is None else net.log_std.detach().clone()

    n_mb = size // bs
    used = n_mb * bs
    losses: list[torch.Tensor] = []
    stop = False
    shuffle = used < size or n_mb > 1  # one minibatch holding the rollout: order is moot
    epoch = None
    for _ in range(algo.n_epochs):
        if shuffle or epoch is None:
            idx = torch.as_tensor(algo.rng.permutation(size)[:used], device=algo.device) \
                if shuffle else slice(None)
            epoch = epoch_data(algo, t, idx, n_mb, old_out, weight)
        e_obs, e_act, e_logp, e_v, e_ret, e_adv, e_old_out = epoch
        for start in range(0, used, bs):
            mb = slice(start, start + bs)
            out, v = net(e_obs[mb])
            logp, entropy = dist.log_prob_entropy(out, net.log_std, e_act[mb])
            log_ratio = logp - e_logp[mb]
            ratio = log_ratio.exp()
            if algo.kl_early_stop is not None:
                approx_kl = ((ratio - 1) - log_ratio).detach().mean()  # k3 (Schulman 2020)
                if float(approx_kl) > 1.5 * algo.kl_early_stop:
                    stop = True
                    break
            kl = dist.kl(e_old_out[mb], out, old_log_std, net.log_std) if kl_penalty else None
            pg_loss = policy_loss(algo, ratio, e_adv[mb], kl, clip)
            v_loss = value_loss(algo, v, e_v[mb], e_ret[mb], clip)
            ent = entropy.mean()
            optimizer_step(algo, pg_loss + algo.vf_coef * v_loss - algo.ent_coef * ent)
            losses.append(torch.stack([pg_loss, v_loss, ent]).detach())
        if stop:
            break

    # how far the policy moved over the whole update, measured once on the full rollout
    with torch.no_grad():
        out = net.policy_out(t.obs)
        logp = dist.log_prob_entropy(out, net.log_std, t.actions)[0]
        log_ratio = logp - t.old_logp
        ratio_m1 = log_ratio.exp() - 1
        nan3 = torch.full((3,), float("nan"), device=algo.device)
        stats = [torch.stack(losses).mean(0) if losses else nan3,
                 (ratio_m1 - log_ratio).mean()[None],
                 (ratio_m1.abs() > clip).float().mean()[None]]
        if kl_penalty:
            stats.append(dist.kl(old_out, out, old_log_std, net.log_std).mean()[None])
        if net.log_std is not None:
            stats.append(net.log_std.exp().mean()[None])
        values = torch.cat(stats).tolist()  # the update's one read-back
    metrics = dict(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"),
                       values))
    metrics.update({"explained_variance": explained_variance(batch.values.ravel(),
                                                             ret_TN.ravel()),
                    "learning_rate": lr, "charts/clip_coef": clip})
    if kl_penalty:
        metrics.update(algo.adapt_beta(values[5]))
    if net.log_std is not None:
        metrics["charts/action_std"] = values[-1]
    return metrics


def epoch_data(algo: PPO, t, idx, n_mb: int, old_out: torch.Tensor | None,
               weight: torch.Tensor | None = None) -> tuple:
    """The rollout in this epoch's order, advantages standardised per minibatch (then weighed,
    for a rollout acted by an older policy: PPO.proximal)."""
    adv = t.adv[idx].reshape(n_mb, algo.batch_size)
    if algo.norm_adv and algo.batch_size > 1:  # all minibatches at once
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    if weight is not None:
        adv = adv * weight[idx].reshape(n_mb, algo.batch_size)
    return (t.obs[idx], t.actions[idx], t.old_logp[idx], t.old_v[idx], t.ret[idx],
            adv.reshape(-1), None if old_out is None else old_out[idx])
