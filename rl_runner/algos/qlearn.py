"""Q-learning on a Q-network for Discrete actions: the one learner of dqn and of cql's Discrete
variant.

Q(s, .) is an MLP (over a Nature CNN's features for image observations, the `encoder`; batches
of images stay uint8 until the CNN), trained on the Huber loss of its TD error against a target
network's value of the next observation:
- the target takes max_a Q-target(s', a) (DQN, Mnih et al. 2015), or with `double_q` the target
  network's value of the online network's argmax (double DQN, van Hasselt et al. 2016);
- with `dueling`, the network has a value head and an advantage head, Q = V + A - mean_a A
  (Wang et al. 2016);
- a batch of n-step returns (batch.steps) bootstraps with gamma ** steps; prioritized replay's
  importance-sampling weights (batch.weights) scale each row's loss, and the absolute TD errors
  are kept for its new priorities (`td_errors`);
- the target network follows the online one by Polyak averaging after every gradient step
  (`target_every_step`, cql), or when its owner calls `update_target` (dqn: every
  target_update_interval env steps).
A learner built on it (cql) adds a term to the loss through `critic_penalty`. Not deterministic,
`act` samples softmax(Q) (cql's evaluation; dqn acts epsilon-greedily on `greedy`).
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
    """A Q-network, its target copy and its Adam, stepped on replay batches."""

    def __init__(self, *, obs_dim: int, n_actions: int, start: int, hidden_sizes: list[int],
                 lr: float, gamma: float, tau: float, seed: int, activation: str = "relu",
                 encoder: nn.Module | None = None, device: torch.device = torch.device("cpu"),
                 double_q: bool = True, dueling: bool = False, max_grad_norm: float = 0.0,
                 target_every_step: bool = True):
        self.start, self.gamma, self.tau = start, gamma, tau
        self.double_q, self.dueling, self.max_grad_norm = double_q, dueling, max_grad_norm
        self.target_every_step = target_every_step
        self.image, self.device = encoder is not None, torch.device(device)
        in_dim = encoder.out_dim if encoder is not None else obs_dim
        # dueling: one more output column, the value head's
        net = ParallelMLP(in_dim, list(hidden_sizes), n_actions + dueling, k=1,
                          activation=activation, out_gains=(1.0,))
        self.net = (net if encoder is None else EncodedMLP(encoder, net)).to(self.device)
        self.opt = FlatAdam(self.net.parameters(), lr=lr)
        self.target = PolyakTarget(self.net, self.opt, tau)
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0
        self.td_errors: np.ndarray | None = None  # |TD error| [G, B] of the last prioritized batch

    def preferred_threads(self, cores: int) -> int:
        return 1  # CNN or not: Algorithm.preferred_threads says why

    def critic_penalty(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor,
                       q_KB: torch.Tensor, q_KBA: torch.Tensor
                       ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A term added to the TD loss, and metrics about it (their mean over the update's
        minibatches is returned by `update`), from Q(s, a) [1, B] of the batch's actions and
        Q(s, .) [1, B, |A|]; Q-learning itself adds none."""
        return None, {}

    def q_values(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """Q(s, .) [1, B, |A|] of `net` (the online or the target network)."""
        out = net(obs)
        if not self.dueling:
            return out
        advantage, value = out[..., :-1], out[..., -1:]
        return value + advantage - advantage.mean(-1, keepdim=True)

    @torch.no_grad()
    def policy_q(self, obs: np.ndarray) -> torch.Tensor:
        """Q(s, .) [B, |A|] of the network the policy reads: the online one here."""
        return self.q_values(self.net, obs_tensor(obs, self.image, self.device))[0]

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a), as indices from 0."""
        return self.policy_q(obs).argmax(-1).cpu().numpy()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if deterministic:
            return self.greedy(obs) + self.start
        # on the CPU from here: the sampling generator is the CPU's, and so are the actions
        q_BA = self.policy_q(obs).cpu()
        u = torch.rand(q_BA.shape, generator=self.gen).clamp_(min=1e-20)
        return torch.argmax(q_BA - torch.log(-torch.log(u)), dim=-1).numpy() + self.start

    @torch.no_grad()
    def td_target(self, next_obs: torch.Tensor, rewards_B: torch.Tensor,
                  terminated_B: torch.Tensor, steps_B: torch.Tensor | None) -> torch.Tensor:
        """r + gamma^steps (1 - terminated) Q-target(s', a'), a' the greedy action of the
        target network, or with double_q of the online one."""
        q_next_BA = self.q_values(self.target.net, next_obs)[0]
        if self.double_q:
            best_B1 = self.q_values(self.net, next_obs)[0].argmax(-1, keepdim=True)
            q_next_B = q_next_BA.gather(1, best_B1)[:, 0]
        else:
            q_next_B = q_next_BA.max(-1).values
        discount = self.gamma if steps_B is None else self.gamma ** steps_B
        return rewards_B + discount * (1.0 - terminated_B) * q_next_B

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """One gradient step per minibatch of batch (actions as float indices from 0;
        observations [G, B, D] float32, or [G, B, *image] uint8 with an encoder)."""
        stats, extras, td = [], [], []
        dev = self.device

        def rows(x: np.ndarray | None, g: int) -> torch.Tensor | None:
            return None if x is None else torch.from_numpy(x[g]).to(dev)

        for g in range(len(batch.rewards)):
            obs, next_obs = rows(batch.obs, g), rows(batch.next_obs, g)
            actions = rows(batch.actions, g).long().reshape(1, -1, 1)
            y_B = self.td_target(next_obs, rows(batch.rewards, g), rows(batch.terminated, g),
                                 rows(batch.steps, g))
            q_KBA = self.q_values(self.net, obs)
            q_KB = q_KBA.gather(2, actions)[..., 0]
            weights_B = rows(batch.weights, g)
            if weights_B is None:
                loss = F.smooth_l1_loss(q_KB[0], y_B)
            else:  # importance-sampling weights of prioritized replay
                loss = (weights_B * F.smooth_l1_loss(q_KB[0], y_B, reduction="none")).mean()
            penalty, extra = self.critic_penalty(obs, next_obs, q_KB, q_KBA)
            self.opt.zero_grad()
            (loss if penalty is None else loss + penalty).backward()
            if self.max_grad_norm > 0:
                self.opt.clip_grad_norm(self.max_grad_norm)
            self.opt.step()
            if self.target_every_step:
                self.target.update()
            self.grad_steps += 1
            stats.append((loss.item(), q_KB.detach().mean().item()))
            extras.append(extra)
            if batch.indices is not None:
                td.append((y_B - q_KB[0].detach()).abs())
        self.td_errors = torch.stack(td).cpu().numpy() if td else None
        loss, q = np.mean(stats, 0)
        metrics = {"qf_loss": float(loss), "qf_values": float(q)}
        for key in extras[0]:
            metrics[key] = sum(e[key] for e in extras) / len(extras)
        return metrics

    def update_target(self, times: int = 1) -> None:
        """`times` target updates: a copy of the online network (tau = 1), or as many Polyak
        steps towards it."""
        if self.tau >= 1.0:
            if times > 0:
                with torch.no_grad():
                    self.target.flat.copy_(self.opt.flat)
            return
        for _ in range(times):
            self.target.update()

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
