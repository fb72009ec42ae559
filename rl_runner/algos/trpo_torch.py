"""TRPO's policy step and value fit on the torch path (images, GPUs), by autograd.

The textbook construction: g = d surrogate / d theta; Fisher-vector products F v as the gradient
of (d KL / d theta) . v, the Hessian of the mean KL(pi_old || pi_theta) at theta_old by double
backpropagation (the graph of d KL / d theta is built once per step and reused by every product);
conjugate gradient and the step size as in trpo.py; the line search writing the actor's entries
of FlatAdam's flat buffer on the device. The numpy path computes the same F v as J^T H J
(trpo.py); tests/test_torch_path.py checks that the two agree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch

from rl_runner.algos.torch_onpolicy import optimizer_step, rollout_tensors
from rl_runner.batches import Rollout

if TYPE_CHECKING:
    from rl_runner.algos.trpo import TRPO


class PolicyBatch(NamedTuple):
    """A rollout flattened for the policy step, with the pre-update policy's outputs on it
    (numpy arrays on the numpy path, device tensors on the torch path)."""

    obs: np.ndarray
    actions: np.ndarray
    old_logp: np.ndarray
    adv: np.ndarray
    old_out: np.ndarray
    old_log_std: np.ndarray | None


class LineSearch(NamedTuple):
    """Outcome of the backtracking line search (the evaluation is of the parameters it kept)."""

    accepted: bool
    shrinks: int  # times the step was shrunk before it was accepted (line_search_max_iter if not)
    surrogate: float
    kl: float
    entropy: float


def backtrack(algo: TRPO, flat, idx, full_step, evaluate, old_out) -> LineSearch:
    """Backtracking line search on the actor's entries `idx` of the flat parameters (a numpy
    array or a tensor alike): the largest step coef^k * full_step that improves the surrogate
    with KL <= max_kl, else theta_old restored (TRPO paper sec. 6, appendix C). `evaluate()`
    gives (surrogate, KL, entropy) at the current parameters, evaluate(old_out) at the old."""
    theta_old = flat[idx]  # a copy (advanced indexing)
    surrogate_old, _, entropy_old = evaluate(old_out)
    coef = 1.0
    for shrinks in range(algo.max_iter):
        flat[idx] = theta_old + coef * full_step
        surrogate, kl, entropy = evaluate()
        if kl <= algo.max_kl and surrogate > surrogate_old:  # False for NaN as well
            return LineSearch(True, shrinks, surrogate, kl, entropy)
        coef *= algo.shrink
    flat[idx] = theta_old
    return LineSearch(False, algo.max_iter, surrogate_old, 0.0, entropy_old)


class TorchTRPO:
    """The torch twin of TRPO's numpy methods policy_batch, surrogate_gradient_and_fvp,
    line_search and fit_value; the same inputs, outputs and RNG use, with tensors."""

    def __init__(self, algo: TRPO):
        self.algo = algo
        net, flat = algo.net, algo.optimizer.flat
        # the actor's parameter tensors (a stacked ParallelMLP tensor holds the critic's row
        # too) and, per tensor, the range of its elements that are the actor's
        parts = [(p, lo, hi) for p, (lo, hi) in zip(net.parameters(), net.actor_elements())
                 if hi > lo]
        self.actor_params = [p for p, _, _ in parts]
        grad_idx, flat_idx, offset = [], [], 0
        for p, lo, hi in parts:
            assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
            grad_idx.append(torch.arange(offset + lo, offset + hi))
            # each element's place in the flat buffer, in the parameter's logical order (a CNN's
            # channels_last weights are not stored in that order)
            where = torch.as_strided(torch.arange(len(flat)), p.shape, p.stride(),
                                     p.storage_offset())
            flat_idx.append(where.reshape(-1)[lo:hi])
            offset += p.numel()
        # where the actor's entries sit in the concatenated gradients of actor_params, and in
        # the flat parameter buffer (the same order: x and the step line up with both)
        self.grad_idx = torch.cat(grad_idx).to(algo.device)
        self.flat_idx = torch.cat(flat_idx).to(algo.device)

    def policy_batch(self, batch: Rollout) -> tuple[PolicyBatch, torch.Tensor]:

        algo = self.algo
        adv, ret = algo.advantages_and_returns(batch)
        t = rollout_tensors(algo, batch, adv, ret)
        net = algo.net
        with torch.no_grad():
            old_out = net.policy_out(t.obs)
        old_log_std = None if net.log_std is None else net.log_std.detach().clone()
        return PolicyBatch(t.obs, t.actions, t.old_logp, t.adv, old_out, old_log_std), t.ret

    def flat_grad(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """d y / d theta over the actor's entries, in flat_idx order."""
        grads = torch.autograd.grad(y, self.actor_params, materialize_grads=True, **kwargs)
        return torch.cat([g.reshape(-1) for g in grads])[self.grad_idx]

    def surrogate_gradient_and_fvp(self, pb: PolicyBatch) -> tuple[
            torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """g = d surrogate / d actor params (float64), and v -> (F + damping I) v."""
        algo, net = self.algo, self.algo.net
        out = net.policy_out(pb.obs)
        logp, entropy = net.dist.log_prob_entropy(out, net.log_std, pb.actions)
        # L(theta) = mean(pi_theta / pi_old * A) (+ entropy bonus), paper eq. 14
        surrogate = ((logp - pb.old_logp).exp() * pb.adv).mean() + algo.ent_coef * entropy.mean()
        g = self.flat_grad(surrogate, retain_graph=True)
        kl = net.dist.kl(pb.old_out, out, pb.old_log_std, net.log_std).mean()
        grad_kl = self.flat_grad(kl, create_graph=True)
        damping = algo.cg_damping

        def fvp(v: torch.Tensor) -> torch.Tensor:
            hv = self.flat_grad(grad_kl @ v.float(), retain_graph=True)
            return hv.double() + damping * v

        return g.detach().double(), fvp

    @torch.no_grad()
    def line_search(self, pb: PolicyBatch, full_step: torch.Tensor) -> LineSearch:
        """TRPO.line_search on the flat buffer's actor entries."""

        return backtrack(self.algo, self.algo.optimizer.flat, self.flat_idx, full_step.float(),
                         lambda old_out=None: self.evaluate(pb, old_out), pb.old_out)

    def evaluate(self, pb: PolicyBatch, out: torch.Tensor | None = None) -> tuple[
            float, float, float]:
        """(surrogate, mean KL(old || current), mean entropy): one read-back."""
        algo, net = self.algo, self.algo.net
        if out is None:
            out = net.policy_out(pb.obs)
        logp, entropy = net.dist.log_prob_entropy(out, net.log_std, pb.actions)
        kl = net.dist.kl(pb.old_out, out, pb.old_log_std, net.log_std)
        surrogate = ((logp - pb.old_logp).exp() * pb.adv).mean()
        surrogate, kl, entropy = torch.stack([surrogate, kl.mean(), entropy.mean()]).tolist()
        return surrogate + algo.ent_coef * entropy, kl, entropy

    def fit_value(self, obs: torch.Tensor, ret: torch.Tensor) -> float:
        """TRPO.fit_value: Adam on vf_coef * the squared error, minibatches in the numpy path's
        order. The actor's gradient is zero, so its Adam step is zero (no moments there)."""
        algo, net = self.algo, self.algo.net
        size = len(obs)
        if algo.value_epochs == 0:
            with torch.no_grad():
                return float((net.value_out(obs) - ret).pow(2).mean())
        losses = []
        shuffle = algo.batch_size < size  # one minibatch holding the rollout: order is moot
        e_obs, e_ret = obs, ret
        for _ in range(algo.value_epochs):
            if shuffle:
                perm = torch.as_tensor(algo.rng.permutation(size), device=algo.device)
                e_obs, e_ret = obs[perm], ret[perm]
            for start in range(0, size, algo.batch_size):
                mb = slice(start, start + algo.batch_size)
                loss = (net.value_out(e_obs[mb]) - e_ret[mb]).pow(2).mean()
                optimizer_step(algo, algo.vf_coef * loss)
                losses.append(loss.detach())
        return float(torch.stack(losses).mean())


def all_finite(x: np.ndarray | torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else \
        bool(np.isfinite(x).all())
