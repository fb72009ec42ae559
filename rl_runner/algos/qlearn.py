"""Double DQN on a Q-network: the learner of cql for Discrete actions.

Kumar et al. 2020 run discrete CQL on QR-DQN; a plain Q(s, .) with the double-DQN target
(van Hasselt et al. 2016), a Huber TD loss and a Polyak-averaged target network is the common
smaller form. The policy is argmax_a Q(s, a); not deterministic, it samples softmax(Q).
Given an `encoder` (a Nature CNN for image observations), Q is the MLP over its features, and
the target network is a copy of both; batches of images stay uint8 until the CNN.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_runner.algos.image_nets import EncodedMLP, obs_tensor, to_cpu
from rl_runner.algos.twin_critic import PolyakTarget
from rl_runner.batches import ReplayBatch
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam


class QLearner:
    """A Q-network trained by double DQN; a learner built on it (cql) overrides
    `critic_penalty` to add a term to its loss."""

    def __init__(self, *, obs_dim: int, n_actions: int, start: int, hidden_sizes: list[int],
                 lr: float, gamma: float, tau: float, seed: int, activation: str = "relu",
                 encoder: nn.Module | None = None, device: torch.device = torch.device("cpu")):
        self.start, self.gamma, self.tau = start, gamma, tau
        self.image, self.device = encoder is not None, torch.device(device)
        in_dim = encoder.out_dim if encoder is not None else obs_dim
        net = ParallelMLP(in_dim, list(hidden_sizes), n_actions, k=1, activation=activation,
                          out_gains=(1.0,))
        self.net = (net if encoder is None else EncodedMLP(encoder, net)).to(self.device)
        self.opt = FlatAdam(self.net.parameters(), lr=lr)
        self.target = PolyakTarget(self.net, self.opt, tau)
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0

    def preferred_threads(self, cores: int) -> int:
        return 1  # CNN or not: Algorithm.preferred_threads says why

    def critic_penalty(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor,
                       q_KB: torch.Tensor, q_KBA: torch.Tensor
                       ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A term added to the TD loss, and metrics about it (their mean over the update's
        minibatches is returned by `update`), from Q(s, a) [1, B] of the batch's actions and
        Q(s, .) [1, B, |A|]; double DQN adds none."""
        return None, {}

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        # on the CPU from here: the sampling generator is the CPU's, and so are the actions
        q_BA = self.net(obs_tensor(obs, self.image, self.device))[0].cpu()
        if deterministic:
            return q_BA.argmax(-1).numpy() + self.start
        u = torch.rand(q_BA.shape, generator=self.gen).clamp_(min=1e-20)
        return torch.argmax(q_BA - torch.log(-torch.log(u)), dim=-1).numpy() + self.start

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """One double-DQN step per minibatch of batch (actions as float indices from 0;
        observations [G, B, D] float32, or [G, B, *image] uint8 with an encoder)."""
        stats, extras = [], []
        dev = self.device
        for g in range(len(batch.rewards)):
            obs = torch.from_numpy(batch.obs[g]).to(dev)
            next_obs = torch.from_numpy(batch.next_obs[g]).to(dev)
            actions = torch.from_numpy(batch.actions[g]).to(dev).long().reshape(1, -1, 1)
            with torch.no_grad():  # the online net picks a', the target net values it
                best = self.net(next_obs).argmax(-1, keepdim=True)
                q_next = self.target.net(next_obs).gather(2, best)[0, :, 0]
                y_B = torch.from_numpy(batch.rewards[g]).to(dev) + self.gamma * (
                    1.0 - torch.from_numpy(batch.terminated[g]).to(dev)) * q_next
            q_KBA = self.net(obs)
            q_KB = q_KBA.gather(2, actions)[..., 0]
            loss = F.smooth_l1_loss(q_KB[0], y_B)
            penalty, extra = self.critic_penalty(obs, next_obs, q_KB, q_KBA)
            self.opt.zero_grad()
            (loss if penalty is None else loss + penalty).backward()
            self.opt.step()
            self.target.update()
            self.grad_steps += 1
            stats.append((loss.item(), q_KB.detach().mean().item()))
            extras.append(extra)
        loss, q = np.mean(stats, 0)
        metrics = {"qf_loss": float(loss), "qf_values": float(q)}
        for key in extras[0]:
            metrics[key] = sum(e[key] for e in extras) / len(extras)
        return metrics

    def state_dict(self) -> dict:
        """CPU tensors, wherever the networks are (a GPU run's checkpoint loads on a CPU)."""
        return to_cpu({"net": self.net.state_dict(), "target": self.target.flat.clone(),
                       "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                       "grad_steps": self.grad_steps})

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])  # in place: the net stays a view of opt's buffer
        with torch.no_grad():
            self.target.flat.copy_(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
