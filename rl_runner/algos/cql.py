"""CQL (Kumar et al. 2020): conservative Q-learning from a fixed dataset.

The critics' loss gains alpha' * (E_s[log sum_a exp Q(s, a)] - E_(s,a)~D[Q(s, a)]) per critic,
pushing Q down on actions the dataset does not hold and up on those it does.
- `CQL`, Box actions, CQL(H) (the paper's appendix F) on a SAC learner: the log-sum-exp over a in
  `n_action_samples` uniform actions, as many current-policy actions at s and as many policy
  actions at s' (each evaluated at s), importance-corrected by their densities (uniform: 2^-A on
  [-1, 1]^A).
- `DiscreteCQL`: the exact log-sum-exp over all actions of a double-DQN Q-network (qlearn.py);
  the policy is the argmax of its Polyak-averaged target network (ConservativeQLearner says
  why). The paper's discrete CQL is on QR-DQN; the SAC learner's entropy bonus, as large as
  CartPole's reward, held it near the data's policy. On image observations
  the Q-network is a Nature CNN and an MLP (the encoder and cnn_* keys), on `device`.
Both are `algo=cql`: CQL.variant_for picks the class for the env's action space, and each takes
only its own keys. alpha' is `cql_weight`, or with `lagrange=true` it is tuned by dual gradient
ascent so that the gap stays near `target_gap` (alpha' in [0, 1e6]). `cql_weight=0` gives naive
offline SAC (Box) or double DQN (Discrete).
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos import image_nets
from rl_runner.algos.base import to_unit_box
from rl_runner.algos.contracts import Algorithm, Offline
from rl_runner.algos.image_nets import obs_tensor
from rl_runner.algos.qlearn import QLearner
from rl_runner.algos.sac import SAC
from rl_runner.batches import OfflineBatch, ReplayBatch
from rl_runner.encoders import EncoderKind, make_cnn
from rl_runner.errors import UserError
from rl_runner.params import (Activation, Fraction, NonNegativeFloat, PositiveInt,
                               Sizes)

ALPHA_PRIME_MAX = 1e6


class ConservativeTerm:
    """alpha' x (log-sum-exp Q - dataset Q), summed over the critics, with alpha' fixed at
    `weight` or, with `lagrange`, stepped by dual ascent towards a gap of `target_gap`."""

    def __init__(self, *, weight: float, lagrange: bool, target_gap: float, lr: float):
        self.weight, self.lagrange, self.target_gap = weight, lagrange, target_gap
        self.log_alpha_prime = torch.zeros(1, requires_grad=True)
        self.opt = torch.optim.Adam([self.log_alpha_prime], lr=lr)

    @property
    def active(self) -> bool:
        """False for weight 0 without lagrange: naive offline learning, no term computed."""
        return self.weight > 0 or self.lagrange

    def alpha_prime(self) -> torch.Tensor:
        if not self.lagrange:
            return torch.tensor(self.weight)
        return self.log_alpha_prime.detach().exp().clamp(0.0, ALPHA_PRIME_MAX)[0]

    def __call__(self, lse_KB: torch.Tensor,
                 q_KB: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        gap_K = lse_KB.mean(1) - q_KB.mean(1)
        alpha = self.alpha_prime()
        if self.lagrange:  # dual ascent: alpha' grows while the gap exceeds its target
            dual = -(self.log_alpha_prime.exp().clamp(0.0, ALPHA_PRIME_MAX)  # on the CPU
                     * (gap_K.detach().cpu() - self.target_gap)).sum()
            self.opt.zero_grad()
            dual.backward()
            self.opt.step()
            penalty = (alpha * (gap_K - self.target_gap)).sum()
        else:
            penalty = alpha * gap_K.sum()
        return penalty, {"cql_gap": gap_K.mean().item(), "cql_alpha": float(alpha),
                         "q_data": q_KB.mean().item()}

    def state_dict(self) -> dict:
        return {"log_alpha_prime": self.log_alpha_prime.detach().clone(),
                "alpha_prime_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha_prime.copy_(state["log_alpha_prime"])
        self.opt.load_state_dict(state["alpha_prime_opt"])


class ConservativeSAC(SAC):
    """SAC whose critics also descend the conservative term, its log-sum-exp estimated from
    sampled actions (CQL(H))."""

    name = "cql"

    def __init__(self, *, term: ConservativeTerm, n_action_samples: PositiveInt = 4, **kwargs):
        super().__init__(**kwargs)
        self.term, self.n_samples = term, n_action_samples

    def critic_penalty(self, obs_BD, next_obs_BD, q_KB, q_KBA):
        if not self.term.active:
            return None, {}
        return self.term(self.logsumexp_q(obs_BD, next_obs_BD), q_KB)

    def logsumexp_q(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor) -> torch.Tensor:
        """The importance-sampled log of the integral of exp Q(s, .) over [-1, 1]^A: [K, B]."""
        n, (B, A) = self.n_samples, (len(obs_BD), self.action_dim)
        with torch.no_grad():
            rand = self.uniform_actions(B * n)
            a_cur, logp_cur = self.sample_actions(obs_BD, n)
            a_next, logp_next = self.sample_actions(next_obs_BD, n)
        actions = torch.cat([rand, a_cur, a_next], 0)  # [3 B n, A]
        obs_n = obs_BD.repeat_interleave(n, 0)
        q = self.q(torch.cat([obs_n.repeat(3, 1), actions], -1))[..., 0]  # [K, 3 B n]
        log_density = torch.cat([torch.full((B * n,), -A * math.log(2.0)), logp_cur, logp_next])
        weighted = (q - log_density).reshape(len(q), 3, B, n)
        # log of the mean of exp(Q - log density): an estimate of log of the integral of exp Q
        lse = torch.logsumexp(weighted.permute(0, 2, 1, 3).reshape(len(q), B, 3 * n), -1)
        return lse - math.log(3 * n)


class ConservativeQLearner(QLearner):
    """Double DQN whose loss also holds the conservative term, over all actions exactly, and
    whose policy reads the target network, the Polyak average of the online iterates.

    Why the average: where either action keeps the pole up, their Q differ by far less than Q
    itself (CartPole's mixed data: Q near 100 = 1 / (1 - gamma), median action gap 0.23 to
    0.44), and the online network's gaps move by about as much within a few hundred Adam steps
    (0.02 to 0.39 in 500 steps), so its argmax flips on 2% to 35% of the data's states in 500
    steps and its return swung from 500 to 181 and back between checkpoints. The average keeps
    the gaps and drops that step-to-step noise (docs/benchmarks.md, Offline RL, says more).
    """

    def __init__(self, *, term: ConservativeTerm, **kwargs):
        super().__init__(**kwargs)
        self.term = term

    @torch.no_grad()
    def policy_q(self, obs: np.ndarray) -> torch.Tensor:
        """Q(s, .) [B, |A|] of the network the policy reads: the target."""
        return self.q_values(self.target.net, obs_tensor(obs, self.image, self.device))[0]

    def critic_penalty(self, obs_BD, next_obs_BD, q_KB, q_KBA):
        if not self.term.active:
            return None, {}
        return self.term(torch.logsumexp(q_KBA, -1), q_KB)


def learner_update(learner: ConservativeSAC | ConservativeQLearner, batch: OfflineBatch,
                   actions_BA: np.ndarray, image: bool = False) -> dict[str, float]:
    """One gradient step of the learner on the dataset rows (actions in its own space);
    `image`: the observations go as they are (uint8 images), else flattened to float32."""
    B = len(batch.rewards)

    def rows(obs: np.ndarray) -> np.ndarray:
        return obs[None] if image else obs.reshape(1, B, -1).astype(np.float32)

    replay = ReplayBatch(rows(batch.obs), actions_BA[None],
                         batch.rewards.reshape(1, B).astype(np.float32),
                         batch.terminated.reshape(1, B).astype(np.float32),
                         rows(batch.next_obs), learner.grad_steps)
    metrics = learner.update(replay)
    if "q_data" not in metrics:  # cql_weight=0: still show the Q estimate on dataset actions
        metrics["q_data"] = metrics["qf_values"]
    return metrics


def load_learner_state(learner, term: ConservativeTerm, state: dict) -> None:
    if "learner" not in state:
        raise UserError("this cql checkpoint was written before cql's learner changed "
                        "(2026-12-03); train it again")
    learner.load_state_dict(state["learner"])
    term.load_state_dict(state)


class CQL(Offline):
    """CQL(H) for Box actions on a SAC learner; `algo=cql` builds DiscreteCQL for Discrete ones.

    Box-only keys: n_action_samples (uniform, current- and next-policy actions each, per state;
    the paper takes 10, each one adds 3 x batch_size critic rows), actor_lr (the actor's own lr,
    slower than the critics'), backup_entropy and ent_coef (as SAC's). Their defaults are CQL's
    Gym settings.
    """

    name = "cql"
    action_spaces = (gym.spaces.Box,)
    discrete = False

    @classmethod
    def variant_for(cls, action_space: gym.Space) -> type[Algorithm]:
        return DiscreteCQL if isinstance(action_space, gym.spaces.Discrete) else cls

    @classmethod
    def supports(cls, action_space: gym.Space) -> bool:
        """Under the name cql: Box here, Discrete through DiscreteCQL."""
        variant = cls.variant_for(action_space)
        return isinstance(action_space, variant.action_spaces)

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, cql_weight: NonNegativeFloat = 5.0,
                 lagrange: bool = False, target_gap: float = 5.0,
                 n_action_samples: PositiveInt = 4, lr: NonNegativeFloat = 3e-4,
                 actor_lr: NonNegativeFloat = 1e-4, gamma: Fraction = 0.99, tau: Fraction = 0.005,
                 hidden_sizes: Sizes = (128, 128), batch_size: PositiveInt = 256,
                 ent_coef: NonNegativeFloat | None = None, backup_entropy: bool = False,
                 activation: Activation = "relu", encoder: EncoderKind = "auto",
                 cnn_channels: Sizes = (32, 64, 64), cnn_kernels: Sizes = (8, 4, 3),
                 cnn_strides: Sizes = (4, 2, 1), cnn_features: PositiveInt = 512):
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        if spec.resolve(observation_space) == "cnn":  # the keys are DiscreteCQL's (cql.yaml)
            raise UserError("cql with Box actions learns from vector observations (its sampled "
                            "actions' term has no image path); this env gives images: use "
                            "algo.encoder=mlp, or an env with Discrete actions")
        self.batch_size = batch_size
        self.term = ConservativeTerm(weight=cql_weight, lagrange=lagrange,
                                     target_gap=target_gap, lr=lr)
        self.sac = ConservativeSAC(
            term=self.term, n_action_samples=n_action_samples,
            observation_space=observation_space, action_space=action_space, n_envs=n_envs,
            total_steps=total_steps, seed=seed, lr=lr, actor_lr=actor_lr, gamma=gamma, tau=tau,
            hidden_sizes=hidden_sizes, batch_size=batch_size, ent_coef=ent_coef,
            backup_entropy=backup_entropy, activation=activation, learning_starts=0,
            encoder="mlp")

    @property
    def grad_steps(self) -> int:
        return self.sac.grad_steps

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.sac.act(obs, deterministic)

    def preferred_threads(self, cores: int) -> int:
        return self.sac.preferred_threads(cores)

    def update(self, batch: OfflineBatch) -> dict[str, float]:
        # the env's units to the policy space [-1, 1]
        actions = to_unit_box(batch.actions, self.sac.action_center, self.sac.action_scale)
        return learner_update(self.sac, batch, actions)

    def state_dict(self) -> dict:
        return {"learner": self.sac.state_dict(), **self.term.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        load_learner_state(self.sac, self.term, state)


class DiscreteCQL(Offline):
    """CQL for Discrete actions on a double-DQN Q-network (built by `algo=cql`).

    Discrete-only keys: encoder and cnn_* (a Nature CNN before the Q-network's hidden_sizes for
    image observations; the keys every image-capable algorithm takes)."""

    name = "cql"
    action_spaces = (gym.spaces.Discrete,)
    discrete = True

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, cql_weight: NonNegativeFloat = 5.0,
                 lagrange: bool = False, target_gap: float = 5.0, lr: NonNegativeFloat = 3e-4,
                 gamma: Fraction = 0.99, tau: Fraction = 0.005, hidden_sizes: Sizes = (128, 128),
                 batch_size: PositiveInt = 256, activation: Activation = "relu",
                 encoder: EncoderKind = "auto", cnn_channels: Sizes = (32, 64, 64),
                 cnn_kernels: Sizes = (8, 4, 3), cnn_strides: Sizes = (4, 2, 1),
                 cnn_features: PositiveInt = 512, device: torch.device = torch.device("cpu")):
        self.batch_size, self.device = batch_size, torch.device(device)
        self.start = int(action_space.start)
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        self.image = spec.resolve(observation_space) == "cnn"
        self.term = ConservativeTerm(weight=cql_weight, lagrange=lagrange,
                                     target_gap=target_gap, lr=lr)
        self.learner = ConservativeQLearner(
            term=self.term, obs_dim=int(np.prod(observation_space.shape)),
            n_actions=int(action_space.n), start=self.start, hidden_sizes=hidden_sizes, lr=lr,
            gamma=gamma, tau=tau, seed=seed, activation=activation, device=device,
            encoder=make_cnn(observation_space, spec) if self.image else None)

    @property
    def grad_steps(self) -> int:
        return self.learner.grad_steps

    def preferred_threads(self, cores: int) -> int:
        return self.learner.preferred_threads(cores)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.learner.act(obs, deterministic)

    def update(self, batch: OfflineBatch) -> dict[str, float]:
        # indices from 0, one float column, as the replay buffer stores them
        actions = (np.asarray(batch.actions).reshape(-1, 1) - self.start).astype(np.float32)
        return learner_update(self.learner, batch, actions, self.image)

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), **self.term.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        load_learner_state(self.learner, self.term, state)
