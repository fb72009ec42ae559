"""CQL (Kumar et al. 2020): conservative Q-learning from a fixed dataset.

The critics' loss gains alpha' * (E_s[log sum_a exp Q(s, a)] - E_(s,a)~D[Q(s, a)]) per critic,
pushing Q down on actions the dataset does not hold and up on those it does.
- Box actions, CQL(H) (the paper's appendix F): the log-sum-exp over a in `n_action_samples`
  uniform actions, as many current-policy actions at s and as many policy actions at s' (each
  evaluated at s), importance-corrected by their densities (uniform: 2^-A on [-1, 1]^A).
- Discrete actions: the exact log-sum-exp over all actions of a double-DQN Q-network (qlearn.py),
  whose argmax is the policy (the paper's discrete CQL is on QR-DQN; the SAC learner's entropy
  bonus, as large as CartPole's reward, held it near the data's policy).
alpha' is `cql_weight`, or with `lagrange=true` it is tuned by dual gradient ascent so that the
gap stays near `target_gap` (alpha' in [0, 1e6]). `cql_weight=0` gives naive offline SAC (Box)
or double DQN (Discrete).
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos.base import to_unit_box
from rl_runner.algos.contracts import Offline
from rl_runner.algos.qlearn import QLearner
from rl_runner.algos.sac import SAC, squashed_gaussian
from rl_runner.batches import OfflineBatch, ReplayBatch
from rl_runner.datasets import Dataset
from rl_runner.errors import UserError
from rl_runner.params import (Activation, Fraction, NonNegativeFloat, PositiveInt,
                               Sizes)


class CQL(Offline):
    name = "cql"

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, cql_weight: NonNegativeFloat = 5.0,
                 lagrange: bool = False, target_gap: float = 5.0,
                 n_action_samples: PositiveInt = 4, lr: NonNegativeFloat = 3e-4,
                 gamma: Fraction = 0.99, tau: Fraction = 0.005, hidden_sizes: Sizes = (128, 128),
                 batch_size: PositiveInt = 256, ent_coef: NonNegativeFloat | None = None,
                 activation: Activation = "relu", actor_lr: NonNegativeFloat = 1e-4,
                 backup_entropy: bool = False):
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.start = int(action_space.start) if self.discrete else 0
        if self.discrete:
            self.learner = QLearner(obs_dim=int(np.prod(observation_space.shape)),
                                    n_actions=int(action_space.n), start=self.start,
                                    hidden_sizes=hidden_sizes, lr=lr, gamma=gamma, tau=tau,
                                    seed=seed, activation=activation)
        else:
            self.sac = self.learner = SAC(
                observation_space=observation_space, action_space=action_space, n_envs=n_envs,
                total_steps=total_steps, seed=seed, lr=lr, gamma=gamma, tau=tau,
                hidden_sizes=hidden_sizes, batch_size=batch_size, ent_coef=ent_coef,
                activation=activation, learning_starts=0)
            self.sac.actor_lr_scale = actor_lr / lr
            self.sac.backup_entropy = backup_entropy
        self.batch_size = batch_size
        self.cql_weight, self.lagrange, self.target_gap = cql_weight, lagrange, target_gap
        self.n_samples = n_action_samples
        self.log_alpha_prime = torch.zeros(1, requires_grad=True)
        self.alpha_prime_opt = torch.optim.Adam([self.log_alpha_prime], lr=lr)
        self.learner.critic_penalty = self.penalty if cql_weight > 0 or lagrange else None
        self._stats: dict[str, float] = {}

    @property
    def grad_steps(self) -> int:
        return self.learner.grad_steps

    def fit_dataset(self, train: Dataset) -> None:
        """Nothing to fit: the critics see observations as they are, as SAC does."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.learner.act(obs, deterministic)

    def preferred_threads(self, cores: int) -> int:
        return self.learner.preferred_threads(cores)

    # ---- the conservative term ----------------------------------------------------------------
    def alpha_prime(self) -> torch.Tensor:
        if not self.lagrange:
            return torch.tensor(self.cql_weight)
        return self.log_alpha_prime.detach().exp().clamp(0.0, 1e6)[0]

    def logsumexp_q(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor) -> torch.Tensor:
        """CQL(H)'s importance-sampled log of the integral of exp Q(s, .) for Box actions:
        [K, B]."""
        sac, n = self.sac, self.n_samples
        B, A = len(obs_BD), sac.action_dim
        with torch.no_grad():
            rand = torch.rand((B * n, A), generator=sac.gen) * 2 - 1
            obs_n = obs_BD.repeat_interleave(n, 0)
            mean, log_std = sac._actor_out(obs_n)
            a_cur, logp_cur = squashed_gaussian(mean, log_std,
                                                torch.randn(mean.shape, generator=sac.gen))
            mean, log_std = sac._actor_out(next_obs_BD.repeat_interleave(n, 0))
            a_next, logp_next = squashed_gaussian(mean, log_std,
                                                  torch.randn(mean.shape, generator=sac.gen))
        actions = torch.cat([rand, a_cur, a_next], 0)  # [3 B n, A]
        q = sac.q(torch.cat([obs_n.repeat(3, 1), actions], -1))[..., 0]  # [K, 3 B n]
        log_density = torch.cat([torch.full((B * n,), -A * math.log(2.0)), logp_cur, logp_next])
        weighted = (q - log_density).reshape(len(q), 3, B, n)
        # log of the mean of exp(Q - log density): an estimate of log of the integral of exp Q
        lse = torch.logsumexp(weighted.permute(0, 2, 1, 3).reshape(len(q), B, 3 * n), -1)
        return lse - math.log(3 * n)

    def penalty(self, obs_BD, next_obs_BD, q_KB, q_KBA) -> torch.Tensor:
        """alpha' x (log-sum-exp Q - dataset Q), summed over the critics; steps alpha' if tuned."""
        lse_KB = torch.logsumexp(q_KBA, -1) if self.discrete else \
            self.logsumexp_q(obs_BD, next_obs_BD)
        gap_K = lse_KB.mean(1) - q_KB.mean(1)
        alpha = self.alpha_prime()
        if self.lagrange:  # dual ascent: alpha' grows while the gap exceeds its target
            dual = -(self.log_alpha_prime.exp().clamp(0.0, 1e6)
                     * (gap_K.detach() - self.target_gap)).sum()
            self.alpha_prime_opt.zero_grad()
            dual.backward()
            self.alpha_prime_opt.step()
            penalty = (alpha * (gap_K - self.target_gap)).sum()
        else:
            penalty = alpha * gap_K.sum()
        self._stats = {"cql_gap": gap_K.mean().item(), "cql_alpha": float(alpha),
                       "q_data": q_KB.mean().item()}
        return penalty

    # ---- learning -----------------------------------------------------------------------------
    def update(self, batch: OfflineBatch) -> dict[str, float]:
        B = len(batch.rewards)
        if self.discrete:  # from 0, one float column, as the replay buffer stores them
            actions = (np.asarray(batch.actions).reshape(B, 1) - self.start).astype(np.float32)
        else:  # the env's units to the policy space [-1, 1]
            actions = to_unit_box(batch.actions, self.sac.action_center, self.sac.action_scale)
        replay = ReplayBatch(batch.obs.reshape(1, B, -1).astype(np.float32), actions[None],
                             batch.rewards.reshape(1, B).astype(np.float32),
                             batch.terminated.reshape(1, B).astype(np.float32),
                             batch.next_obs.reshape(1, B, -1).astype(np.float32),
                             self.grad_steps)
        metrics = self.learner.update(replay)
        if self._stats:
            metrics.update(self._stats)
        else:  # cql_weight=0: still show the Q estimate on dataset actions
            metrics["q_data"] = metrics["qf_values"]
        return metrics

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(),
                "log_alpha_prime": self.log_alpha_prime.detach().clone(),
                "alpha_prime_opt": self.alpha_prime_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "learner" not in state:
            raise UserError("this cql checkpoint was written before cql's learner changed "
                            "(2026-12-03); train it again")
        self.learner.load_state_dict(state["learner"])
        with torch.no_grad():
            self.log_alpha_prime.copy_(state["log_alpha_prime"])
        self.alpha_prime_opt.load_state_dict(state["alpha_prime_opt"])
