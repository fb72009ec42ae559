"""Double DQN on a Q-network: the learner of cql for Discrete actions.

Kumar et al. 2020 run discrete CQL on QR-DQN; a plain Q(s, .) with the double-DQN target
(van Hasselt et al. 2016), a Huber TD loss and a Polyak-averaged target network is the common
smaller form. The policy is argmax_a Q(s, a); not deterministic, it samples softmax(Q).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from rl_runner.batches import ReplayBatch
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam, share_flat


class QLearner:
    def __init__(self, *, obs_dim: int, n_actions: int, start: int, hidden_sizes: list[int],
                 lr: float, gamma: float, tau: float, seed: int, activation: str = "relu"):
        self.start, self.gamma, self.tau = start, gamma, tau
        self.net = ParallelMLP(obs_dim, list(hidden_sizes), n_actions, k=1,
                               activation=activation, out_gains=(1.0,))
        self.opt = FlatAdam(self.net.parameters(), lr=lr)
        target = copy.deepcopy(self.net).requires_grad_(False)
        self.target_flat = self.opt.flat.clone()
        share_flat(target, self.target_flat)
        self.target = target
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0
        # cql's conservative term: (s, s', Q(s, a) [1, B], Q(s, .) [1, B, |A|]) -> scalar
        self.critic_penalty = None

    def preferred_threads(self, cores: int) -> int:
        return 1

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        q_BA = self.net(torch.from_numpy(np.asarray(obs, np.float32).reshape(len(obs), -1)))[0]
        if deterministic:
            return q_BA.argmax(-1).numpy() + self.start
        u = torch.rand(q_BA.shape, generator=self.gen).clamp_(min=1e-20)
        return torch.argmax(q_BA - torch.log(-torch.log(u)), dim=-1).numpy() + self.start

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """One double-DQN step per minibatch of batch (actions as float indices from 0)."""
        stats = []
        for g in range(len(batch.rewards)):
            obs, next_obs = torch.from_numpy(batch.obs[g]), torch.from_numpy(batch.next_obs[g])
            actions = torch.from_numpy(batch.actions[g]).long().reshape(1, -1, 1)
            with torch.no_grad():  # the online net picks a', the target net values it
                best = self.net(next_obs).argmax(-1, keepdim=True)
                q_next = self.target(next_obs).gather(2, best)[0, :, 0]
                y_B = torch.from_numpy(batch.rewards[g]) + self.gamma * (
                    1.0 - torch.from_numpy(batch.terminated[g])) * q_next
            q_KBA = self.net(obs)
            q_KB = q_KBA.gather(2, actions)[..., 0]
            loss = F.smooth_l1_loss(q_KB[0], y_B)
            penalty = self.critic_penalty and self.critic_penalty(obs, next_obs, q_KB, q_KBA)
            self.opt.zero_grad()
            (loss if penalty is None else loss + penalty).backward()
            self.opt.step()
            self.target_flat.lerp_(self.opt.flat, self.tau)
            self.grad_steps += 1
            stats.append((loss.item(), q_KB.detach().mean().item()))
        loss, q = np.mean(stats, 0)
        return {"qf_loss": float(loss), "qf_values": float(q)}

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "target": self.target_flat.clone(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])  # in place: the net stays a view of opt's buffer
        with torch.no_grad():
            self.target_flat.copy_(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
