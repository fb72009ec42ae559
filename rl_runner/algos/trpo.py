"""TRPO (Schulman et al. 2015): natural-gradient policy steps inside a KL trust region.

One policy step per rollout: the surrogate's gradient g, the search direction x ~ F^-1 g by
conjugate gradient on Fisher-vector products (the Hessian of the mean KL as J^T H J, one
forward-mode and one backward pass of the numpy kernel each, so F is never formed), a step
scaled to the KL radius, and a backtracking line search that keeps the step only if the
surrogate improves and the KL stays within the limit. The value function is fitted
separately by Adam over minibatches, as in sb3-contrib's TRPO.
The torch path (images, GPUs) computes the same step by autograd: trpo_torch.py.
"""
from __future__ import annotations

import math
from typing import Annotated, Callable

import numpy as np
import torch

from rl_runner.algos.base import OnPolicyAlgorithm, explained_variance
from rl_runner.algos.trpo_torch import (LineSearch, PolicyBatch, TorchTRPO, all_finite,
                                        backtrack)
from rl_runner.batches import Rollout
from rl_runner.errors import UserError
from rl_runner.heads import log_softmax
from rl_runner.kernels import MLPKernel
from rl_runner.params import (Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                               PositiveInt, Range)

OPEN_UNIT = Range(0, 1, open_low=True, open_high=True)


def conjugate_gradient(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, iters: int,
                       tol: float = 1e-10) -> np.ndarray:
    """Approximate solution of A x = b for symmetric positive-definite A, given only x -> A x.

    Hestenes & Stiefel (1952); TRPO paper appendix C. numpy arrays or torch tensors; the
    callers pass float64: the damped Fisher can be badly conditioned and the vectors are small.
    Stops early when |r|^2 <= tol.
    """
    x = b * 0.0
    r = b * 1.0  # residual b - A x at x = 0 (a copy)
    p = r * 1.0
    rr = float(r @ r)
    for _ in range(iters):
        if rr <= tol:
            break
        ap = matvec(p)
        curvature = float(p @ ap)
        if not curvature > 0:  # not positive definite in this direction (or NaN): stop here
            break
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def host(a) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else a


class TRPO(OnPolicyAlgorithm):
    """Trust region policy optimisation with GAE and a separately fitted value function.

    Defaults follow sb3-contrib's TRPO (lr is the critic's; there is no actor lr). Its target_kl
    is `max_kl` here (not PPO's early stop) and its n_critic_updates `value_epochs`.
    """

    name = "trpo"
    overlaps_rollouts = True  # the surrogate's ratio is taken against the acting log-probabilities
    # images: the critic gets its own CNN, so that fitting the value cannot move the policy
    shared_encoder = False
    bf16_ok = False  # conjugate gradient on Fisher products: float32

    def __init__(self, *, max_kl: PositiveFloat = 0.01, cg_max_steps: PositiveInt = 15,
                 cg_damping: NonNegativeFloat = 0.1,
                 line_search_shrinking_factor: Annotated[float, OPEN_UNIT] = 0.8,
                 line_search_max_iter: PositiveInt = 10, value_epochs: NonNegativeInt = 10,
                 batch_size: PositiveInt = 128, gae_lambda: Fraction = 0.95,
                 lr: NonNegativeFloat = 1e-3, max_grad_norm: NonNegativeFloat = 0.0,
                 vf_coef: NonNegativeFloat = 1.0, **kwargs):
        super().__init__(lr=lr, max_grad_norm=max_grad_norm, vf_coef=vf_coef, **kwargs)
        rollout_size = self.n_steps * self.n_envs
        if batch_size > rollout_size:
            raise UserError(f"algo.batch_size={batch_size} is larger than the rollout "
                            f"(algo.n_steps x env.n_envs = {rollout_size})")
        self.max_kl, self.cg_max_steps, self.cg_damping = max_kl, cg_max_steps, cg_damping
        self.shrink, self.max_iter = line_search_shrinking_factor, line_search_max_iter
        self.value_epochs, self.batch_size, self.gae_lambda = value_epochs, batch_size, gae_lambda
        self.policy_updates = 0  # line-search bookkeeping, checkpointed: "how often" in the logs
        self.rejected_steps = 0
        self.shrunk_steps = 0
        # the torch path (images, GPUs) has its own twins of the steps below
        self._torch = TorchTRPO(self) if self.backend == "torch" else None
        if self._torch is None:
            self._numpy_setup()

    def preferred_threads(self, cores: int) -> int:
        """One thread for an MLP, whatever its rollout: trpo's cartpole preset (2048 rows, 64x64)
        ran 0.77-1.04x the env steps/s on two threads in three alternated pairs of runs (AMD
        EPYC Zen 5); its conjugate gradient and line search are many small ops."""
        return cores if self.encoder == "cnn" else 1

    def _numpy_setup(self) -> None:
        """The numpy path's actor leaves and kernels (views into FlatAdam's buffers)."""
        self._make_actor_leaves()
        # the policy step's forward, Jacobian-vector and backward passes: the actor (row 0) alone
        self._actor_kernel = MLPKernel(self.net.body, members=slice(0, 1))
        self._fvp_ws = [np.empty_like(w) for w in self._actor_kernel.ws]
        self._fvp_bs = [np.empty_like(b) for b in self._actor_kernel.bs]
        self._leaf_ends = np.cumsum([t.numel() for t in self._leaves])[:-1]
        # the value fit touches the critic (row 1 of each stacked layer) alone: half the work
        self._critic_kernel = MLPKernel(self.net.body, members=slice(1, 2))
        self._critic_grads = ([g[1:2] for g in self._grad_ws], [g[1:2] for g in self._grad_bs])
        self._actor_grads = [g[0] for g in self._grad_ws + self._grad_bs]
        self._value_grad_out: dict[int, np.ndarray] = {}

    def _make_actor_leaves(self) -> None:
        """The actor's parameters (row 0 of each ParallelMLP tensor, and the log-std) as views of
        the flat parameter buffer, and their indices in it.

        Actor and critic are stacked on dim 0 of each ParallelMLP weight (row 0 the actor), so
        row 0 is a contiguous block of the flat buffer. The surrogate and the KL do not depend on
        the critic, so the natural gradient lives in these rows alone: working on them only
        halves the forward and backward work and keeps the critic out of the CG vectors. The
        order (weight, bias per layer, then log-std) is that of the flat vectors g, x and F v.
        """
        flat = self.optimizer.flat
        body = self.net.body
        self._leaves = [t.detach()[0] for w, b in zip(body.weights, body.biases) for t in (w, b)]
        if self.net.log_std is not None:
            self._leaves.append(self.net.log_std.detach())
        base = flat.untyped_storage().data_ptr()
        assert all(t.untyped_storage().data_ptr() == base for t in self._leaves)
        self._actor_idx = np.concatenate([
            np.arange(t.storage_offset(), t.storage_offset() + t.numel()) for t in self._leaves])
        self._flat_np = flat.numpy()

    # ---- the update ---------------------------------------------------------------------------
    def update(self, batch: Rollout) -> dict[str, float]:
        lr = self.current_lr()
        path = self if self._torch is None else self._torch
        pb, ret = path.policy_batch(batch)
        self.env_steps += len(ret)
        result = self.policy_step(pb)
        value_loss = path.fit_value(pb.obs, ret)
        metrics = {"surrogate": result.surrogate, "kl": result.kl, "value_loss": value_loss,
                   "entropy": result.entropy,
                   "charts/line_search_steps": float(result.shrinks),
                   "charts/line_search_rejected": float(not result.accepted),
                   "charts/line_search_reject_rate": self.rejected_steps / self.policy_updates,
                   "explained_variance": explained_variance(batch.values.ravel(), host(ret)),
                   "learning_rate": lr}
        if self.net.log_std is not None:
            metrics["charts/action_std"] = float(self.net.log_std.detach().exp().mean())
        return metrics

    def summary(self) -> str:
        """The line search's record over the run, for the end of train.log."""
        n = max(1, self.policy_updates)
        return (f"line search over {self.policy_updates} policy steps: accepted at full size "
                f"{self.policy_updates - self.shrunk_steps - self.rejected_steps} "
                f"({100 * (n - self.shrunk_steps - self.rejected_steps) / n:.0f}%), shrunk "
                f"{self.shrunk_steps} ({100 * self.shrunk_steps / n:.0f}%), rejected "
                f"{self.rejected_steps} ({100 * self.rejected_steps / n:.0f}%)")

    def advantages_and_returns(self, batch: Rollout) -> tuple[np.ndarray, np.ndarray]:
        """GAE advantages (standardised) and value targets, flat float32 [T * N]."""
        adv_TN, ret_TN = self.advantages(batch, self.gae_lambda)
        adv = adv_TN.reshape(-1)
        if self.norm_adv and adv.size > 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        return adv.astype(np.float32), ret_TN.reshape(-1).astype(np.float32)

    def policy_batch(self, batch: Rollout) -> tuple[PolicyBatch, np.ndarray]:
        """The rollout flattened, with the advantages, and the value targets."""
        adv, ret = self.advantages_and_returns(batch)
        size = adv.size
        obs = batch.obs.reshape(size, -1)
        actions = batch.actions.reshape(size, *batch.actions.shape[2:])
        old_out = self.forward(obs)[0].copy()
        old_log_std = None if self.log_std is None else self.log_std.copy()
        return PolicyBatch(obs, actions, batch.log_probs.reshape(size), adv, old_out,
                           old_log_std), ret

    def policy_step(self, pb: PolicyBatch) -> LineSearch:
        """One natural-gradient step on the actor, at most KL = max_kl from the old policy."""
        path = self if self._torch is None else self._torch
        g, fvp = path.surrogate_gradient_and_fvp(pb)
        x = conjugate_gradient(fvp, g, self.cg_max_steps)  # x ~ (F + damping I)^-1 g
        # the step beta x that puts the quadratic KL model on the boundary:
        # 1/2 beta^2 x^T A x = delta, so beta = sqrt(2 delta / x^T A x) (paper appendix C)
        x_ax = float(x @ fvp(x)) if all_finite(x) else math.nan
        scale = math.sqrt(2.0 * self.max_kl / x_ax) if x_ax > 0 else 0.0
        result = path.line_search(pb, scale * x)
        self.policy_updates += 1
        self.rejected_steps += not result.accepted
        self.shrunk_steps += result.accepted and result.shrinks > 0
        self.grad_steps += 1
        return result

    def surrogate_gradient_and_fvp(self, pb: PolicyBatch) -> tuple[
            np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """g = d surrogate / d actor params, and v -> (F + damping I) v, by the numpy kernel.

        F is the Hessian of the mean KL(pi_old || pi_theta) at theta = theta_old, which is the
        Fisher information of the policy (paper sec. 6 and appendix C). There the KL's gradient
        in the actor output is zero, so its Hessian is J^T H J: J the Jacobian of the actor output
        in the parameters, H the KL's Hessian in the output (categorical: diag(p) - p p^T;
        Gaussian mean: 1 / var; log-std: 2 per dimension, not coupled to the mean). Each product
        is one forward-mode pass for J v and one backward pass for J^T (H J v): F is never
        formed, and no autograd graph is built (tests check it against autograd's Hessian).
        """
        kernel, head, n = self._actor_kernel, self.head, len(pb.obs)
        out = kernel.forward(pb.obs.reshape(n, -1))[0]
        logp, _, _ = head.evaluate(out, self.log_std, pb.actions)
        # L(theta) = mean(pi_theta / pi_old * A) (+ entropy bonus), paper eq. 14
        g_out, g_log_std = head.backward(np.exp(logp - pb.old_logp) * pb.adv / n,
                                         np.full(n, self.ent_coef / n, np.float32))
        g = self._actor_backward(g_out, g_log_std)
        if head.discrete:
            p = np.exp(log_softmax(out))

            def hessian_out(jv: np.ndarray) -> np.ndarray:
                return p * (jv - (p * jv).sum(axis=1, keepdims=True)) / n
        else:
            inv_var_n = np.exp(-2.0 * self.log_std) / n

            def hessian_out(jv: np.ndarray) -> np.ndarray:
                return jv * inv_var_n
        damping = self.cg_damping

        def fvp(v: np.ndarray) -> np.ndarray:
            parts = np.split(np.asarray(v, np.float32), self._leaf_ends)
            n_layers = len(kernel.ws)
            d_ws = [d.reshape(w.shape) for d, w in zip(parts[0:2 * n_layers:2], kernel.ws)]
            d_bs = [d.reshape(b.shape) for d, b in zip(parts[1:2 * n_layers:2], kernel.bs)]
            jv = kernel.jvp(d_ws, d_bs)[0]
            hv = self._actor_backward(hessian_out(jv),
                                      2.0 * parts[-1] if self.log_std is not None else None)
            return hv.astype(np.float64) + damping * np.asarray(v, np.float64)

        return g.astype(np.float64), fvp

    def _actor_backward(self, g_out_BA: np.ndarray, g_log_std_A: np.ndarray | None) -> np.ndarray:
        """J^T g: the gradient in the actor's parameters (flat, in actor-index order) of the last
        actor forward, given the gradient in its output (and in the log-std, passed through)."""
        ws, bs = self._fvp_ws, self._fvp_bs
        self._actor_kernel.backward(g_out_BA[None], ws, bs)
        parts = [a.ravel() for pair in zip(ws, bs) for a in pair]
        if g_log_std_A is not None:
            parts.append(np.asarray(g_log_std_A, np.float32).ravel())
        return np.concatenate(parts)

    def line_search(self, pb: PolicyBatch, full_step: np.ndarray) -> LineSearch:
        """Try theta_old + shrink^i full_step for i = 0, 1, ...; keep the first that raises the
        surrogate with KL <= max_kl, else restore theta_old (paper sec. 6, appendix C)."""
        return backtrack(self, self._flat_np, self._actor_idx, full_step.astype(np.float32),
                         lambda old_out=None: self._evaluate(pb, old_out), pb.old_out)

    def _evaluate(self, pb: PolicyBatch, out: np.ndarray | None = None) -> tuple[
            float, float, float]:
        """(surrogate, mean KL(old || current), mean entropy) by the numpy kernel, no autograd.

        `out`: the actor's output when it is already known (the old policy's), else computed.
        """
        if out is None:
            out = self.forward(pb.obs)[0]
        logp, entropy, kl = self.head.evaluate(out, self.log_std, pb.actions, pb.old_out,
                                               pb.old_log_std)
        entropy_mean = float(entropy.mean())
        surrogate = float((np.exp(logp - pb.old_logp) * pb.adv).mean())
        return surrogate + self.ent_coef * entropy_mean, float(kl.mean()), entropy_mean

    def fit_value(self, obs: np.ndarray, ret: np.ndarray) -> float:
        """`value_epochs` passes of Adam on the squared error, in minibatches of batch_size.

        Only the value output gets a gradient (the actor's is zero, so Adam's moments there stay
        zero and its step is exactly zero): the natural-gradient step is the only thing that
        moves the actor, as the trust region requires. Returns the mean loss over the steps.
        """
        size = len(obs)
        if self.value_epochs == 0:
            err = self.forward(obs)[1] - ret
            return float(err @ err) / size
        losses = []
        shuffle = self.batch_size < size  # one minibatch holding the rollout: order is moot
        e_obs, e_ret = obs, ret
        for _ in range(self.value_epochs):
            if shuffle:
                perm = self.rng.permutation(size)
                e_obs, e_ret = obs[perm], ret[perm]
            for start in range(0, size, self.batch_size):
                mb = slice(start, start + self.batch_size)
                losses.append(self._value_step(e_obs[mb], e_ret[mb]))
        return float(np.mean(losses))

    def _value_step(self, obs: np.ndarray, ret: np.ndarray) -> float:
        """One Adam step on the critic's squared error; the actor's gradient stays zero."""
        n = len(obs)
        err = self._critic_kernel.forward(obs.reshape(n, -1))[0, :, 0] - ret
        g_out = self._value_grad_out.get(n)
        if g_out is None:  # the critic's unused output columns keep a zero gradient
            g_out = self._value_grad_out[n] = np.zeros((1, n, self.head.n_out), np.float32)
        np.multiply(err, 2.0 * self.vf_coef / n, out=g_out[0, :, 0])
        self._critic_kernel.backward(g_out, *self._critic_grads)
        for g in self._actor_grads:
            g[...] = 0.0
        if self._grad_log_std is not None:
            self._grad_log_std[...] = 0.0
        if self.max_grad_norm > 0:
            self.optimizer.clip_grad_norm(self.max_grad_norm)
        self.optimizer.step()
        self.count_grad_step()
        return float(err @ err) / n

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "policy_updates": self.policy_updates,
                "rejected_steps": self.rejected_steps, "shrunk_steps": self.shrunk_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # in place: the actor leaves keep pointing at the buffer
        self.policy_updates, self.rejected_steps = state["policy_updates"], state["rejected_steps"]
        self.shrunk_steps = state.get("shrunk_steps", 0)  # absent from the first TRPO checkpoints
