"""The torch (autograd) path shared by pg, ppo and trpo: rollouts as device tensors, one
optimizer step from a loss, behavioural cloning.

The losses are written as the papers write them and torch autograd differentiates them; the
network, FlatAdam, the numpy RNG and the numpy action sampling are those of the numpy path, so
both paths take the same steps (tests/test_torch_path.py checks it) and share checkpoints.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from rl_runner.batches import Rollout

if TYPE_CHECKING:
    from rl_runner.algos.base import OnPolicyAlgorithm


class RolloutTensors(NamedTuple):
    """A rollout flattened to [T * N, ...] on the algorithm's device."""

    obs: torch.Tensor  # uint8 images or float32 vectors, as the network takes them
    actions: torch.Tensor  # int64 indices (Discrete) or float32 [B, A] (Box)
    old_logp: torch.Tensor
    old_v: torch.Tensor
    adv: torch.Tensor
    ret: torch.Tensor


def actions_tensor(algo: OnPolicyAlgorithm, actions: np.ndarray) -> torch.Tensor:
    a = torch.as_tensor(actions, device=algo.device)
    return a.long() if algo.head.discrete else a.float().reshape(len(a), -1)


def rollout_tensors(algo: OnPolicyAlgorithm, batch: Rollout, adv_TN: np.ndarray,
                    ret_TN: np.ndarray) -> RolloutTensors:
    size = adv_TN.size
    obs = batch.obs.reshape(size, *batch.obs.shape[2:])

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.float32).reshape(size), device=algo.device)

    return RolloutTensors(algo.obs_tensor(obs),
                          actions_tensor(algo, batch.actions.reshape(size, *batch.actions.shape[2:])),
                          put(batch.log_probs), put(batch.values), put(adv_TN), put(ret_TN))


def clip_grad_norm(algo: OnPolicyAlgorithm) -> None:
    """Scale the flat gradient to norm max_grad_norm where it is longer (as
    torch.nn.utils.clip_grad_norm_). On a GPU without reading the norm back: no host sync."""
    opt = algo.optimizer
    if opt.device.type == "cpu":
        opt.clip_grad_norm(algo.max_grad_norm)  # numpy's dot: a few microseconds
    else:
        clip_flat_(opt.grad, algo.max_grad_norm)


def clip_flat_(grad: torch.Tensor, max_norm: float) -> None:
    """grad scaled in place to norm max_norm where it is longer, the norm never leaving the
    device."""
    norm = torch.linalg.vector_norm(grad)
    grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))


def optimizer_step(algo: OnPolicyAlgorithm, loss: torch.Tensor) -> None:
    """Gradient of `loss` into FlatAdam's flat gradient (zeroed first: backward adds), clip,
    Adam step."""
    algo.optimizer.zero_grad()
    loss.backward()
    if algo.max_grad_norm > 0:
        clip_grad_norm(algo)
    algo.optimizer.step()
    algo.count_grad_step()


def actor_critic_step(algo: OnPolicyAlgorithm, t: RolloutTensors) -> torch.Tensor:
    """One step on policy loss + vf_coef value loss - ent_coef entropy over the whole batch
    (pg, a2c); returns the three terms before the step, [3], detached."""
    net = algo.net
    out, v = net(t.obs)
    logp, entropy = net.dist.log_prob_entropy(out, net.log_std, t.actions)
    pg_loss, v_loss, ent = -(logp * t.adv).mean(), (v - t.ret).pow(2).mean(), entropy.mean()
    optimizer_step(algo, pg_loss + algo.vf_coef * v_loss - algo.ent_coef * ent)
    return torch.stack([pg_loss, v_loss, ent]).detach()


def clone(algo: OnPolicyAlgorithm, policy_obs: np.ndarray, actions: np.ndarray, steps: int,
          batch_size: int, rng: np.random.Generator) -> float:
    """OnPolicyAlgorithm.clone on the torch path: Adam steps on -mean log pi(a|s) over
    minibatches drawn by `rng` as the numpy path draws them; the last loss."""
    obs_t, act_t = algo.obs_tensor(policy_obs), actions_tensor(algo, actions)
    net = algo.net
    loss = torch.full((), float("nan"))
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(policy_obs), batch_size), device=algo.device)
        logp = net.dist.log_prob_entropy(net.policy_out(obs_t[idx]), net.log_std, act_t[idx])[0]
        loss = -logp.mean()
        optimizer_step(algo, loss)
    return float(loss.detach())
