"""SAC's gradient step as plain autograd on static shapes, for torch.compile (`algo.compile`).

The hand-optimised step in sac.py is built for a CPU: a custom autograd Function, the actor's
dQ/da through only the min critic by data-dependent row indexing, metrics read back per step.
Those shapes and host syncs rule out CUDA graphs. This step is the same SAC update written the
way LeanRL compiles CleanRL's (torch.compile, CUDA graphs through mode="reduce-overhead"): the
networks' normal forward, autograd for every loss, Adam as tensor ops on the learner's FlatAdam
buffers, Polyak averaging in place, metrics as one tensor. It has no RNG (the caller draws the
noise from the learner's generator and passes it in), no `.item()`, and one shape per run.

`BACKEND` picks how the step runs: "default" (inductor; on CUDA with mode="reduce-overhead"),
any other torch.compile backend name (tests use "aot_eager", which needs no C++ compiler), or
None (the step uncompiled: plain eager autograd).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from rl_runner.algos.sac_math import LOG_STD_MAX, LOG_STD_MIN, METRICS, squashed_gaussian
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam

BACKEND: str | None = "default"


def compiled_update(sac, obs, actions, rewards, discount_GB, next_obs, lr: float) -> dict:
    """SAC.update's steps through CompiledStep: the noise drawn from the learner's generator in
    the order the hand-written step draws it, the metrics read back once."""
    if sac.compiled_step is None:
        sac.compiled_step = CompiledStep(sac, BACKEND)
    for opt in sac.compiled_step.opts:  # the step count on the device, as FlatAdam.step sets it
        opt._step_t.fill_(opt.steps)
    lrs = torch.tensor([lr, sac.actor_opt.lr, lr], device=sac.device)
    results = []
    for g in range(len(rewards)):
        noise = () if sac.discrete else tuple(
            sac._noise(torch.randn, (rewards.shape[1], sac.action_dim)) for _ in range(2))
        results.append(sac.compiled_step(obs[g], actions[g], rewards[g], discount_GB[g],
                                         next_obs[g], lrs, *noise))
        sac.grad_steps += 1
    metrics = dict(zip(METRICS, torch.stack(results).mean(0).tolist()))
    if not sac.learn_alpha:
        del metrics["alpha_loss"]
    metrics["learning_rate"] = lr
    return metrics


def adam_(opt: FlatAdam, lr: torch.Tensor) -> None:
    """One Adam step (as FlatAdam.step, without gradient clipping, as SAC steps) in tensor ops,
    with the step count and lr as tensors so that neither is baked into a compiled graph."""
    beta1, beta2 = opt.betas
    opt._step_t.add_(1)
    opt.exp_avg.lerp_(opt.grad, 1 - beta1)
    opt.exp_avg_sq.mul_(beta2).addcmul_(opt.grad, opt.grad, value=1 - beta2)
    bias1 = 1 - torch.pow(beta1, opt._step_t)
    bias2_sqrt = (1 - torch.pow(beta2, opt._step_t)).sqrt()
    denom = (opt.exp_avg_sq.sqrt() / bias2_sqrt).add_(opt.eps)
    opt.flat.sub_((lr / bias1) * opt.exp_avg / denom)


def detached_forward(net: ParallelMLP, x_BI: torch.Tensor) -> torch.Tensor:
    """net(x) with the weights as constants: gradient reaches x only (the actor's loss through
    the critics leaves the critics' gradient buffer alone)."""
    h = x_BI.unsqueeze(0).expand(net.k, *x_BI.shape)
    last = len(net.weights) - 1
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        h = torch.baddbmm(b.detach(), h, w.detach())
        if i < last:
            h = net.act(h)
    return h


class CompiledStep:
    """One SAC gradient step of `sac` (a rl_runner.algos.sac.SAC) on one minibatch: call with
    the minibatch tensors, the lrs [critics, actor, alpha] and, for Box actions, the noise of the
    actor's samples at s and at s'; returns the metrics in sac.METRICS order, one tensor [6]."""

    def __init__(self, sac, backend: str | None = None):
        self.sac = sac
        self.opts = (sac.critics.opt, sac.actor_opt, sac.alpha_opt)
        self.stepped = self.opts if sac.learn_alpha else self.opts[:2]  # a fixed alpha: no step
        fn = self._discrete if sac.discrete else self._box
        self.cuda_graphs = sac.device.type == "cuda" and backend == "default"
        self.compiled = backend is not None
        if backend is None:
            self.fn = fn
            return
        if sac.device.type == "cuda":  # CUDA graphs replay in place: these buffers stay put
            for opt in self.opts:
                for t in (opt.flat, opt.grad, opt.exp_avg, opt.exp_avg_sq, opt._step_t):
                    torch._dynamo.mark_static_address(t)
            torch._dynamo.mark_static_address(sac.critics.target.flat)
        if backend == "default":
            self.fn = torch.compile(fn, mode="reduce-overhead" if self.cuda_graphs else None,
                                    fullgraph=True)
        else:
            self.fn = torch.compile(fn, backend=backend, fullgraph=True)

    def __call__(self, *args) -> torch.Tensor:
        # backward() inside the step: traced, so that the step is one graph
        ctx = (torch._dynamo.config.patch(trace_autograd_ops=True) if self.compiled
               else contextlib.nullcontext())
        with ctx:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = self.fn(*args)
        for opt in self.stepped:  # the host-side count, as FlatAdam.step keeps it
            opt.steps += 1
        return out.clone() if self.cuda_graphs else out  # a replay overwrites its outputs

    # ---- the losses ---------------------------------------------------------------------------
    def _alpha(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha before this step's temperature update, and the term whose gradient in log alpha
        is J(alpha)'s (2018b eq. 18): multiply it by E[log pi] + target entropy, detached."""
        sac = self.sac
        if not sac.learn_alpha:
            return sac.fixed_alpha[0], sac.fixed_alpha[0] * 0
        return sac.log_alpha.detach().exp()[0], sac.log_alpha[0]

    def _alpha_step(self, log_alpha: torch.Tensor, mean_logp: torch.Tensor,
                    lrs: torch.Tensor) -> torch.Tensor:
        if not self.sac.learn_alpha:
            return mean_logp.new_zeros(())
        loss = -(log_alpha * (mean_logp + self.sac.target_entropy))
        self._descend(2, loss, lrs)
        return loss.detach()

    def _descend(self, i: int, loss: torch.Tensor, lrs: torch.Tensor) -> None:
        opt = self.opts[i]
        opt.grad.zero_()
        loss.backward()
        with torch.no_grad():
            adam_(opt, lrs[i])

    def _finish(self, actor_loss: torch.Tensor, lrs: torch.Tensor) -> None:
        self._descend(1, actor_loss, lrs)
        target = self.sac.critics.target
        with torch.no_grad():
            target.flat.lerp_(target.online_flat, target.tau)

    def _box(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD, lrs, noise_BA,
             noise_next_BA) -> torch.Tensor:
        sac, a = self.sac, noise_BA.shape[-1]
        alpha, log_alpha = self._alpha()

        def policy(x_BD, noise):
            out_BO = sac.actor(x_BD)[0]
            return squashed_gaussian(out_BO[:, :a], out_BO[:, a:].clamp(LOG_STD_MIN, LOG_STD_MAX),
                                     noise)

        a_pi, logp_pi = policy(obs_BD, noise_BA)
        mean_logp = logp_pi.detach().mean()
        alpha_loss = self._alpha_step(log_alpha, mean_logp, lrs)
        with torch.no_grad():
            a_next, logp_next = policy(next_obs_BD, noise_next_BA)
            v_next_B = sac.critics.target.net(torch.cat([next_obs_BD, a_next], -1))[..., 0]
            v_next_B = v_next_B.min(0).values
            if sac.backup_entropy:
                v_next_B = v_next_B - alpha * logp_next
            y_B = rewards_B + discount_B * v_next_B
        q_KB = sac.critics.net(torch.cat([obs_BD, actions_BA], -1))[..., 0]
        qf_loss = 0.5 * (q_KB - y_B).pow(2).mean(1).sum()
        self._descend(0, qf_loss, lrs)
        # the actor against the critics just updated (as SB3 and the hand-written step)
        q_pi_B = detached_forward(sac.critics.net, torch.cat([obs_BD, a_pi], -1))[..., 0]
        actor_loss = (alpha * logp_pi - q_pi_B.min(0).values).mean()
        self._finish(actor_loss, lrs)
        return torch.stack([qf_loss.detach(), actor_loss.detach(), alpha, alpha_loss,
                            -mean_logp, q_KB.detach().mean()])

    def _discrete(self, obs_BD, actions_B1, rewards_B, discount_B, next_obs_BD,
                  lrs) -> torch.Tensor:
        sac = self.sac
        alpha, log_alpha = self._alpha()
        logp_BA = F.log_softmax(sac.actor(obs_BD)[0], -1)
        p_BA = logp_BA.exp()
        mean_logp = (p_BA.detach() * logp_BA.detach()).sum(-1).mean()
        alpha_loss = self._alpha_step(log_alpha, mean_logp, lrs)
        with torch.no_grad():  # V(s') = pi(s')^T [min_j Q-bar_j(s') - alpha log pi(s')]
            logp_next_BA = F.log_softmax(sac.actor(next_obs_BD)[0], -1)
            q_next_BA = sac.critics.target.net(next_obs_BD).min(0).values
            if sac.backup_entropy:
                q_next_BA = q_next_BA - alpha * logp_next_BA
            y_B = rewards_B + discount_B * (logp_next_BA.exp() * q_next_BA).sum(-1)
        q_KBA = sac.critics.net(obs_BD)
        index = actions_B1.long().unsqueeze(0).expand(q_KBA.shape[0], -1, -1)
        q_KB = q_KBA.gather(2, index)[..., 0]
        qf_loss = 0.5 * (q_KB - y_B).pow(2).mean(1).sum()
        self._descend(0, qf_loss, lrs)
        # Q from before this step's critic update, as the hand-written step
        q_min_BA = q_KBA.detach().min(0).values
        actor_loss = (p_BA * (alpha * logp_BA - q_min_BA)).sum(-1).mean()
        self._finish(actor_loss, lrs)
        return torch.stack([qf_loss.detach(), actor_loss.detach(), alpha, alpha_loss,
                            -mean_logp, q_KB.detach().mean()])
