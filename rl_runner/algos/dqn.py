"""DQN (Mnih et al. 2015) with SB3's keys and meanings, and the Rainbow parts that stand alone.

The learner is qlearn.QLearner, the same as discrete cql's. Around it, DQN owns acting and the
schedules, all functions of env steps so that a resume continues them exactly:
- epsilon-greedy exploration, epsilon linear from exploration_initial_eps to
  exploration_final_eps over the first exploration_fraction of the budget (SB3's LinearSchedule),
  each env's action drawn on its own; the learning_starts warm-up is the feeder's random actions;
- the target network: every target_update_interval env steps (counted as SB3 counts them, per
  vector step), a Polyak step with tau, which is a copy at tau = 1 (SB3's default). The steps
  due within a feeder step are taken before its gradient steps, as SB3 takes them while acting;
- options: double_q (double DQN), dueling heads, n_step returns and proportional prioritized
  replay (Schaul et al. 2016; per_beta annealed linearly to 1 over the budget), the last two read
  by the feeder through the OffPolicy contract (n_step, gamma, prioritized, per_alpha, per_beta,
  take_priorities).
Vector observations go through the MLP, images through a Nature CNN first (encoder, cnn_*).
The MLP starts from nn.Linear's own init, as SB3's and CleanRL's Q-networks do, not the
orthogonal sqrt(2) init of the actor-critics (cql's learner keeps that): with the Zoo's cartpole
values, seeds 0-5 ended at 80, 415, 100, 176, 462 and 125 with the orthogonal init and at 108,
499, 176, 500, 474 and 426 with this one (AMD EPYC; both swing from one evaluation to the next).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos import image_nets
from rl_runner.algos.base import Backend, OffPolicyAlgorithm, resolve_backend
from rl_runner.algos.qlearn import QLearner
from rl_runner.batches import ReplayBatch
from rl_runner.encoders import EncoderKind, make_cnn
from rl_runner.params import (Activation, Fraction, NonNegativeFloat, NonNegativeInt,
                               PositiveFloat, PositiveInt, Sizes)


class DQN(OffPolicyAlgorithm):
    """Deep Q-learning for Discrete actions, on one QLearner."""

    name = "dqn"
    action_spaces = (gym.spaces.Discrete,)

    def __init__(self, *, lr: NonNegativeFloat = 1e-4, tau: Fraction = 1.0,
                 hidden_sizes: Sizes = (64, 64), learning_starts: NonNegativeInt = 100,
                 batch_size: PositiveInt = 32, train_freq: PositiveInt = 4,
                 target_update_interval: PositiveInt = 10_000,
                 exploration_fraction: Fraction = 0.1, exploration_initial_eps: Fraction = 1.0,
                 exploration_final_eps: Fraction = 0.05, max_grad_norm: NonNegativeFloat = 10.0,
                 double_q: bool = False, dueling: bool = False, n_step: PositiveInt = 1,
                 prioritized: bool = False, per_alpha: NonNegativeFloat = 0.6,
                 per_beta: Fraction = 0.4, per_eps: PositiveFloat = 1e-6,
                 activation: Activation = "relu", backend: Backend = "auto",
                 encoder: EncoderKind = "auto",
                 cnn_channels: Sizes = (32, 64, 64), cnn_kernels: Sizes = (8, 4, 3),
                 cnn_strides: Sizes = (4, 2, 1), cnn_features: PositiveInt = 512,
                 device: torch.device = torch.device("cpu"), **kwargs):
        super().__init__(lr=lr, tau=tau, hidden_sizes=hidden_sizes,
                         learning_starts=learning_starts, batch_size=batch_size,
                         train_freq=train_freq, **kwargs)
        space, action_space = kwargs["observation_space"], kwargs["action_space"]
        self.start = int(action_space.start)
        self.target_update_interval = target_update_interval
        self.eps_fraction = exploration_fraction
        self.eps_initial, self.eps_final = exploration_initial_eps, exploration_final_eps
        self.n_step, self.prioritized = n_step, prioritized
        self.per_alpha, self.per_beta0, self.per_eps = per_alpha, per_beta, per_eps
        self.device = torch.device(device)
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        self.image = spec.resolve(space) == "cnn"
        self.backend = resolve_backend(backend, "cnn" if self.image else "mlp", self.device)
        self.learner = QLearner(
            obs_dim=self.obs_dim, n_actions=self.n_actions, start=self.start,
            hidden_sizes=self.hidden_sizes, lr=lr, gamma=self.gamma, tau=tau, seed=self.seed,
            activation=activation, encoder=make_cnn(space, spec) if self.image else None,
            device=self.device, double_q=double_q, dueling=dueling,
            max_grad_norm=max_grad_norm, target_every_step=False, manual_backward=True,
            numpy_kernel=self.backend == "numpy", init="torch")
        self.rng = np.random.default_rng(self.seed + 30_000)  # exploration's coins and actions
        self.eval_rng = np.random.default_rng(self.seed + 40_000)  # act(deterministic=False)
        self.env_steps = 0  # counted as the feeder acts (explore and random_actions)
        self.updated_at = 0  # env steps at the last update: the target's schedule
        self.pending: tuple[np.ndarray, np.ndarray] | None = None  # new priorities

    def preferred_threads(self, cores: int) -> int:
        """Every core for an MLP with big matmuls (OffPolicyAlgorithm.matmul_threads: the
        cartpole preset's 256x256 at batch 64 took 74 ms an update on two threads and 86 ms on
        one, Zen 4), one for a CNN (Algorithm.preferred_threads). On that Zen 4 an update of
        the preset came out bit for bit the same on one and on two threads; where the thread
        count does change the last bits, a run whose ThreadTuner switched is not bit for bit
        reproducible (README, Speed)."""
        return 1 if self.image else self.matmul_threads(cores)

    # ---- schedules ----------------------------------------------------------------------------
    def epsilon(self, env_steps: int) -> float:
        """SB3's LinearSchedule of the exploration rate at this many env steps."""
        progress = env_steps / max(1, self.total_steps)
        if progress >= self.eps_fraction:
            return self.eps_final
        return self.eps_initial + progress * (self.eps_final - self.eps_initial) / self.eps_fraction

    def per_beta(self, env_steps: int) -> float:
        """per_beta, annealed linearly to 1 at the end of the budget (Schaul et al. 2016)."""
        progress = min(1.0, env_steps / max(1, self.total_steps))
        return self.per_beta0 + (1.0 - self.per_beta0) * progress

    def target_updates_due(self, env_steps: int) -> int:
        """Target updates from the last update to `env_steps`: SB3 takes one every
        max(target_update_interval // n_envs, 1) vector steps."""
        every = max(self.target_update_interval // self.n_envs, 1) * self.n_envs
        return env_steps // every - self.updated_at // every

    # ---- acting -------------------------------------------------------------------------------
    def _epsilon_greedy(self, obs: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
        """Indices from 0: each env's action at random with probability eps, else greedy."""
        n = len(obs)
        explore = rng.random(n) < eps
        actions = rng.integers(0, self.n_actions, n)
        if not explore.all():
            actions = np.where(explore, actions, self.learner.greedy(obs))
        return actions

    def explore(self, obs: np.ndarray) -> np.ndarray:
        actions = self._epsilon_greedy(obs, self.epsilon(self.env_steps), self.rng)
        self.env_steps += len(obs)
        return actions

    def random_actions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        self.env_steps += n  # the warm-up's steps count towards epsilon's schedule too
        return super().random_actions(n, rng)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return actions + self.start

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Greedy, or epsilon-greedy at the current epsilon (SB3's predict), from its own RNG so
        that evaluations leave training's random stream alone."""
        if deterministic:
            return self.learner.greedy(obs) + self.start
        return self._epsilon_greedy(obs, self.epsilon(self.env_steps), self.eval_rng) + self.start

    # ---- learning -----------------------------------------------------------------------------
    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """The target updates due since the last update, then gradient_steps minibatches."""
        lr = self.learner.opt.lr = self.current_lr(batch.env_steps)
        self.learner.update_target(self.target_updates_due(batch.env_steps))
        self.updated_at = self.env_steps = batch.env_steps
        if not self.image and batch.obs.ndim > 3:  # images into the MLP (encoder=mlp)
            G, B = batch.rewards.shape
            batch = batch._replace(obs=batch.obs.reshape(G, B, -1).astype(np.float32),
                                   next_obs=batch.next_obs.reshape(G, B, -1).astype(np.float32))
        metrics = self.learner.update(batch)
        self.grad_steps = self.learner.grad_steps
        if self.prioritized:
            self.pending = (batch.indices, self.learner.td_errors + self.per_eps)
        return {"td_loss": metrics["qf_loss"], "q_values": metrics["qf_values"],
                "charts/epsilon": self.epsilon(batch.env_steps), "learning_rate": lr}

    def take_priorities(self) -> tuple[np.ndarray, np.ndarray] | None:
        pending, self.pending = self.pending, None
        return pending

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "rng": self.rng.bit_generator.state,
                "eval_rng": self.eval_rng.bit_generator.state, "env_steps": self.env_steps,
                "updated_at": self.updated_at}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.grad_steps = self.learner.grad_steps
        self.rng.bit_generator.state = state["rng"]
        self.eval_rng.bit_generator.state = state["eval_rng"]
        self.env_steps, self.updated_at = state["env_steps"], state["updated_at"]
