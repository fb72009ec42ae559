"""TD3 (Fujimoto et al. 2018) and DDPG (Lillicrap et al. 2016): a deterministic tanh actor with
Q critics, for Box actions.

TD3 is DDPG with three changes (Fujimoto et al. 2018, section 5 and Algorithm 1): the critics'
target takes the smaller of two target critics (clipped double Q), the actor and the targets are
updated every `policy_delay` critic steps, and the target actor's action is smoothed with
clipped Gaussian noise. DDPG here is TD3 with one critic, no delay and no smoothing, as in SB3.

Actions live in the policy space [-1, 1]^A, which the replay buffer stores; exploration adds
Gaussian noise of std `action_noise` there (a fraction of the env's half-range, as SB3's
NormalActionNoise added to its rescaled action) and clips. Vector observations only.
"""
from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos.base import OffPolicyAlgorithm, Precision, resolve_update_precision
from rl_runner.algos.image_nets import to_cpu
from rl_runner.algos.mlp_grad import FlushDenormals, mlp_backward
from rl_runner.algos.sac_math import HostActor
from rl_runner.algos.twin_critic import PolyakTarget, TwinCritic, cached_layers, mlp_forward
from rl_runner.batches import ReplayBatch
from rl_runner.encoders import is_image
from rl_runner.errors import UserError
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam
from rl_runner.params import Activation, NonNegativeFloat, PositiveInt, Sizes


class TD3(OffPolicyAlgorithm):
    """Twin delayed deep deterministic policy gradient; DDPG is its one-critic subclass."""

    name = "td3"
    action_spaces = (gym.spaces.Box,)
    n_critics: ClassVar[int] = 2  # Q networks; the target takes their minimum
    # nn.Linear's init for actor and critics, as the TD3 authors' code and SB3 start them (the
    # actor-critics' orthogonal one: HalfCheetah seed 0 at 100k 1270.6 on a Zen 4; this one
    # 3956.8 and 1239.8 in two runs; SB3 4522.9; docs/benchmarks.md, toolbox)
    init: ClassVar[str] = "torch"

    def __init__(self, *, lr: NonNegativeFloat = 1e-3, hidden_sizes: Sizes = (400, 300),
                 activation: Activation = "relu", actor_lr: NonNegativeFloat | None = None,
                 policy_delay: PositiveInt = 2, target_policy_noise: NonNegativeFloat = 0.2,
                 target_noise_clip: NonNegativeFloat = 0.5,
                 action_noise: NonNegativeFloat = 0.1, precision: Precision = "auto",
                 device: torch.device = torch.device("cpu"), **kwargs):
        super().__init__(lr=lr, hidden_sizes=hidden_sizes, **kwargs)
        space, actions = kwargs["observation_space"], kwargs["action_space"]
        if not isinstance(actions, gym.spaces.Box):
            raise UserError(f"{self.name} takes Box actions, not {actions}; for Discrete "
                            "actions use algo=sac or algo=ppo")
        if is_image(space):
            raise UserError(f"{self.name} takes vector observations, not images {space.shape} "
                            "(it has no CNN); for images use algo=sac or algo=ppo")
        self.device = torch.device(device)
        self.on_cpu = self.device.type == "cpu"
        self.precision = resolve_update_precision(precision, self.device, self.hidden_macs(),
                                                  self.name)
        # the update's hidden-to-hidden products (acting stays float32)
        self.lowp = torch.bfloat16 if self.precision == "bf16" else None
        self.policy_delay, self.action_noise = policy_delay, action_noise
        self.target_policy_noise, self.target_noise_clip = target_policy_noise, target_noise_clip
        self.actor_lr = actor_lr  # None: the actor follows lr (and its annealing)
        self.action_dim = len(self.action_center)
        self.actor = ParallelMLP(self.obs_dim, self.hidden_sizes, self.action_dim, k=1,
                                 activation=activation, out_gains=(0.01,),
                                 init=self.init).to(self.device)
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=self.lr)
        self.actor_target = PolyakTarget(self.actor, self.actor_opt, self.tau)
        self.actor_layers = cached_layers(self.actor)
        self.actor_target_layers = cached_layers(self.actor_target.net)
        self.act_fn = self.actor.act
        self.critics = TwinCritic(self.obs_dim + self.action_dim, self.hidden_sizes, 1,
                                  activation=activation, lr=self.lr, tau=self.tau,
                                  k=self.n_critics, device=self.device, init=self.init)
        # critic 1 alone (views that stay valid: the optimizer steps its flat buffer in place)
        self.q1_layers = [(w[:1], b[:1]) for w, b in self.critics.layers]
        self.relu = activation == "relu"
        # acting on the CPU: a numpy forward of the actor, as sac acts (sac_math.HostActor)
        self.host_actor = HostActor(self.actor_layers, self.relu, None) if self.on_cpu else None
        # (weight, bias) gradient views into the optimizers' flat gradients, for mlp_backward
        self.actor_grads = [(w.grad, b.grad) for w, b in self.actor_layers]
        self.critic_grads = [(w.grad, b.grad) for w, b in self.critics.layers]
        # on the CPU on every device: its state is the same size everywhere (checkpoints move)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.last_actor_loss: float | None = None  # reported by updates without an actor step

    def preferred_threads(self, cores: int) -> int:
        return self.matmul_threads(cores)

    # ---- acting -------------------------------------------------------------------------------
    def _policy(self, layers: list, obs_BD: torch.Tensor,
                lowp: torch.dtype | None = None) -> torch.Tensor:
        """The deterministic action tanh(mu(s)) [B, A] of the actor whose layers are given."""
        return torch.tanh(mlp_forward(layers, self.act_fn, obs_BD, lowp=lowp)[0])

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(obs, np.float32).reshape(len(obs), -1))
        return x if self.on_cpu else x.to(self.device)

    def _randn(self, shape: tuple) -> torch.Tensor:
        """Standard normal noise from the learner's (CPU) generator, on the device."""
        x = torch.randn(shape, generator=self.gen)
        return x if self.on_cpu else x.to(self.device)

    @torch.no_grad()
    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action mu(s) [B, A] of the actor, as a numpy array."""
        if self.host_actor is not None:
            return np.tanh(self.host_actor.out(obs))
        return self._policy(self.actor_layers, self._obs(obs)).cpu().numpy()

    def explore(self, obs: np.ndarray) -> np.ndarray:
        """mu(s) plus N(0, action_noise^2) noise, clipped to the policy space [-1, 1]."""
        a = self.mode(obs)
        if self.action_noise > 0:  # drawn from the learner's generator, as the targets' noise
            noise = torch.randn(a.shape, generator=self.gen).numpy()
            a = np.clip(a + np.float32(self.action_noise) * noise, -1.0, 1.0)
        return a

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if not deterministic:
            return self.to_env(self.explore(obs))
        return self.to_env(self.mode(obs))

    # ---- learning -----------------------------------------------------------------------------
    @torch.no_grad()
    def target(self, rewards_B: torch.Tensor, discount_B: torch.Tensor,
               next_obs_BD: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (1 - terminated) min_j Q'_j(s', clip(mu'(s') + clip(eps, -c, c), -1, 1)),
        eps ~ N(0, target_policy_noise^2) (Fujimoto et al. 2018, eq. 15 and Algorithm 1)."""
        a_next = self._policy(self.actor_target_layers, next_obs_BD, self.lowp)
        if self.target_policy_noise > 0:
            c = self.target_noise_clip
            noise = (self.target_policy_noise * self._randn(a_next.shape)).clamp_(-c, c)
            a_next = (a_next + noise).clamp_(-1.0, 1.0)
        q_next_KB = self.critics.target_q(torch.cat([next_obs_BD, a_next], -1),
                                          self.lowp)[..., 0]
        return rewards_B + discount_B * q_next_KB.min(0).values

    @torch.no_grad()
    def q1_action_grad(self, obs_BD: torch.Tensor,
                       a_BA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q_1(s, a) [B] and dQ_1/da [B, A] through critic 1 alone, without autograd: no graph,
        and none of the critic's weight gradients that autograd would make."""
        hidden: list[torch.Tensor] = []
        x_BI = torch.cat([obs_BD, a_BA], -1)
        q_1B1 = mlp_forward(self.q1_layers, self.act_fn, x_BI, hidden, self.lowp)
        ones = torch.ones_like(q_1B1)
        g_1BA = mlp_backward(self.q1_layers, self.relu, x_BI, hidden, ones,
                             input_from=self.obs_dim, lowp=self.lowp)
        return q_1B1[0, :, 0], g_1BA[0]

    @torch.no_grad()
    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """`gradient_steps` critic steps, one per minibatch of `batch`; the actor and the targets
        step after every policy_delay-th critic step, counted over the whole run (as SB3).
        Gradients are backpropagated by hand (mlp_backward) straight into the optimizers' flat
        gradients: no autograd graph, no zeroing and accumulating."""
        with FlushDenormals():
            return self._update(batch)

    def _update(self, batch: ReplayBatch) -> dict[str, float]:
        lr = self.current_lr(batch.env_steps)
        self.critics.opt.lr = lr
        if self.actor_lr is None:
            self.actor_opt.lr = lr
        else:  # decayed as lr is (anneal_lr)
            self.actor_opt.lr = self.actor_lr * self.lr_fraction(batch.env_steps)
        obs, actions, next_obs, rewards = (self._tensor(x) for x in (
            batch.obs, batch.actions, batch.next_obs, batch.rewards))
        discount_GB = self.gamma * (1.0 - self._tensor(batch.terminated))
        critic_stats, actor_losses = [], []
        for g in range(len(rewards)):
            y_B = self.target(rewards[g], discount_GB[g], next_obs[g])
            critic_stats.append(self._critic_step(obs[g], actions[g], y_B))
            self.grad_steps += 1
            if self.grad_steps % self.policy_delay == 0:
                actor_losses.append(self._actor_step(obs[g]))
        qf, q_values = torch.stack(critic_stats).mean(0).tolist()
        metrics = {"qf_loss": qf, "q_values": q_values, "learning_rate": lr}
        if actor_losses:
            self.last_actor_loss = float(torch.stack(actor_losses).mean())
        if self.last_actor_loss is not None:  # none before the first actor step
            metrics["actor_loss"] = self.last_actor_loss
        return metrics

    def _critic_step(self, obs_BD, actions_BA, y_B) -> torch.Tensor:
        """One Adam step of the critics on sum_j mean (Q_j(s, a) - y)^2 (SB3's loss: the
        critics' MSEs added); returns [loss, mean Q(s, a)]."""
        hidden: list[torch.Tensor] = []
        x_BI = torch.cat([obs_BD, actions_BA], -1)
        q_KB1 = mlp_forward(self.critics.layers, self.act_fn, x_BI, hidden, self.lowp)
        err_KB1 = q_KB1 - y_B[:, None]
        mlp_backward(self.critics.layers, self.relu, x_BI, hidden, err_KB1 * (2 / len(y_B)),
                     grads=self.critic_grads, lowp=self.lowp)
        self.critics.opt.step()
        return torch.stack([err_KB1.pow(2).mean(1).sum(), q_KB1.mean()])

    def _actor_step(self, obs_BD: torch.Tensor) -> torch.Tensor:
        """One Adam step on -mean Q_1(s, mu(s)), then Polyak averaging of every target; returns
        the loss. Its gradient w.r.t. the actor's pre-tanh output u is -dQ_1/da (1 - a^2) / B,
        with dQ_1/da from q1_action_grad."""
        hidden: list[torch.Tensor] = []
        a_BA = torch.tanh(mlp_forward(self.actor_layers, self.act_fn, obs_BD, hidden,
                                      self.lowp)[0])
        q_B, dq_da_BA = self.q1_action_grad(obs_BD, a_BA)
        g_1BA = (dq_da_BA * (a_BA * a_BA - 1) * (1 / len(q_B)))[None]
        mlp_backward(self.actor_layers, self.relu, obs_BD, hidden, g_1BA, grads=self.actor_grads,
                     lowp=self.lowp)
        self.actor_opt.step()
        self.critics.update_target()
        self.actor_target.update()
        return -q_B.mean()

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """A batch array on the device (from the feeder's pinned memory, asynchronously)."""
        t = torch.from_numpy(x)
        return t if self.on_cpu else t.to(self.device, non_blocking=True)

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        last = [] if self.last_actor_loss is None else [self.last_actor_loss]
        state = {"actor": self.actor.state_dict(), "actor_target": self.actor_target.flat.clone(),
                 "actor_opt": self.actor_opt.state_dict(), **self.critics.state_dict(),
                 "gen": self.gen.get_state(), "grad_steps": self.grad_steps,
                 "last_actor_loss": last}
        return state if self.on_cpu else to_cpu(state)  # files load on a CPU-only machine

    def load_state_dict(self, state: dict) -> None:
        # in place (copy_ also moves CPU tensors to the device): parameters stay views into the
        # optimizers' flat buffers, and q1_layers views into them
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.actor_target.flat.copy_(state["actor_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critics.load_state_dict(state)
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
        last = state["last_actor_loss"]
        self.last_actor_loss = float(last[0]) if last else None


class DDPG(TD3):
    """DDPG as SB3 has it: TD3 with one critic, an actor step per critic step and no target
    smoothing; TD3's keys for those are its own settings, refused as algo.* keys of ddpg."""

    name = "ddpg"
    n_critics = 1
    fixed_keys = ("policy_delay", "target_policy_noise", "target_noise_clip")

    def __init__(self, **kwargs):
        super().__init__(policy_delay=1, target_policy_noise=0.0, target_noise_clip=0.0,
                         **kwargs)
