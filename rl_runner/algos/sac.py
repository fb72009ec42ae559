"""SAC (Haarnoja et al. 2018) with twin critics and a learned temperature; discrete SAC.

Twin Q critics with Polyak-averaged targets, a tanh-squashed Gaussian actor for Box actions, and
for Discrete actions the formulation of Christodoulou (2019): expectations over the categorical
policy instead of the reparameterisation trick. "2018b eq. N" is arXiv:1812.05905 (SAC Algorithms
and Applications), "2018a" is arXiv:1801.01290 (the first SAC paper).

Images (uint8, e.g. Atari's 4 stacked frames) go through one Nature CNN that the critics own, as
in DrQ and SAC-AE (Yarats et al. 2021, 2019): the critics' loss trains it, both Q heads share its
features, and a Polyak-averaged copy of it feeds the target critics. The actor is an MLP on its
features, detached: no actor gradient reaches the CNN. Vectors take the MLPs directly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rl_runner.algos import image_nets
from rl_runner.algos.base import OffPolicyAlgorithm
from rl_runner.algos.sac_grad import BoxStep, min_critic_action_grad
from rl_runner.algos.sac_math import (LOG_STD_MAX, LOG_STD_MIN, METRICS, HostActor,
                                      squashed_gaussian)
from rl_runner.algos.twin_critic import CriticEncoder, TwinCritic, cached_layers, mlp_forward
from rl_runner.batches import ReplayBatch
from rl_runner.encoders import EncoderKind, make_cnn
from rl_runner.errors import UserError
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam
from rl_runner.params import Activation, NonNegativeFloat, PositiveFloat, PositiveInt, Sizes


class SAC(OffPolicyAlgorithm):
    """Soft actor-critic with twin critics, target networks and automatic temperature.

    A learner built on it (cql) extends it through `critic_penalty`, `sample_actions` and
    `uniform_actions`, and sets the rest through the constructor's keys.
    """

    name = "sac"

    def __init__(self, *, ent_coef: NonNegativeFloat | None = None,
                 alpha_init: PositiveFloat = 1.0, target_entropy: float | None = None,
                 target_entropy_scale: float = 0.8, activation: Activation = "relu",
                 actor_lr: NonNegativeFloat | None = None, backup_entropy: bool = True,
                 encoder: EncoderKind = "auto", cnn_channels: Sizes = (32, 64, 64),
                 cnn_kernels: Sizes = (8, 4, 3), cnn_strides: Sizes = (4, 2, 1),
                 cnn_features: PositiveInt = 512, compile: bool = False,
                 device: torch.device = torch.device("cpu"), **kwargs):
        super().__init__(**kwargs)
        hidden = self.hidden_sizes
        self.device = torch.device(device)
        self.on_cpu = self.device.type == "cpu"
        space = kwargs["observation_space"]
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        self.encoder: CriticEncoder | None = None
        self.feature_dim = self.obs_dim  # what the MLPs take: the observation or CNN features
        if spec.resolve(space) == "cnn":
            cnn = make_cnn(space, spec).to(self.device)
            self.encoder = CriticEncoder(cnn, lr=self.lr, tau=self.tau)
            self.feature_dim = cnn.out_dim
        if self.discrete:  # Q(s) gives one value per action; the actor gives logits
            critic_in, q_out, actor_out = self.feature_dim, self.n_actions, self.n_actions
            # a fraction of the maximum entropy log|A| (0.98 in Christodoulou 2019; see sac.yaml)
            auto_target = target_entropy_scale * math.log(self.n_actions)
        else:  # Q(s, a); the actor gives the mean and log-std of u, a = tanh(u)
            self.action_dim = len(self.action_center)
            critic_in, q_out, actor_out = self.feature_dim + self.action_dim, 1, 2 * self.action_dim
            auto_target = -float(self.action_dim)  # -dim(A), as in Haarnoja et al. 2018b
        self.target_entropy = auto_target if target_entropy is None else target_entropy
        self.actor = ParallelMLP(self.feature_dim, hidden, actor_out, k=1, activation=activation,
                                 out_gains=(0.01,)).to(self.device)
        self.critics = TwinCritic(critic_in, hidden, q_out, activation=activation, lr=self.lr,
                                  tau=self.tau, device=self.device)
        # None: the actor follows lr (and its annealing); a number: the actor's own lr
        self.actor_lr = actor_lr
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=self.lr)
        self.act_fn = self.actor.act
        self.actor_layers = cached_layers(self.actor)
        self.learn_alpha = ent_coef is None  # else a fixed temperature alpha = ent_coef
        self.fixed_alpha = torch.full((1,), 0.0 if ent_coef is None else float(ent_coef),
                                      device=self.device)
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(alpha_init), device=self.device))
        self.alpha_opt = FlatAdam([self.log_alpha], lr=self.lr)
        # false: the critics' target leaves out -alpha log pi(a'|s') (CQL's Gym setting)
        self.backup_entropy = backup_entropy
        # on the CPU on every device: its state is the same size everywhere (checkpoints move)
        self.gen = torch.Generator().manual_seed(self.seed)
        if compile and (self.encoder or type(self).critic_penalty is not SAC.critic_penalty):
            raise UserError(f"algo.compile=true: {self.name}'s compiled step takes vector "
                            "observations and no critic penalty; use algo.compile=false")
        self.compile, self.compiled_step = compile, None  # the step: built at first update
        # Box actions on vector observations on the CPU, no critic penalty: gradients by hand
        # (sac_grad.py); else autograd (_box_step, _discrete_step). Tests may set it False.
        self.manual_grad = (not self.discrete and self.encoder is None and self.on_cpu
                            and not compile
                            and type(self).critic_penalty is SAC.critic_penalty)
        self.box_step = BoxStep(self) if self.manual_grad else None
        # vector observations on the CPU: acting is a numpy forward of the actor
        self.host_actor = None if self.encoder is not None or not self.on_cpu else HostActor(
            self.actor_layers, activation == "relu", None if self.discrete else self.action_dim)

    def preferred_threads(self, cores: int) -> int:
        if self.encoder is not None:  # a CNN: one thread (Algorithm.preferred_threads)
            return 1
        return self.matmul_threads(cores)

    # ---- acting -------------------------------------------------------------------------------
    def _actor_out(self, obs_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (Discrete), or the mean and clamped log-std of the pre-tanh Gaussian (Box)."""
        out_BO = mlp_forward(self.actor_layers, self.act_fn, obs_BD)[0]
        if self.discrete:
            return out_BO, None
        a = self.action_dim
        return out_BO[:, :a], out_BO[:, a:].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        """What the actor takes for env observations: the CNN's features of images (called
        without autograd), else the flattened observations."""
        if self.encoder is not None:
            return self.encoder.net(torch.as_tensor(np.asarray(obs)).to(self.device))
        x = torch.from_numpy(np.asarray(obs, np.float32).reshape(len(obs), -1))
        return x if self.on_cpu else x.to(self.device)

    def _noise(self, draw, shape) -> torch.Tensor:
        """torch.rand or torch.randn from the learner's (CPU) generator, on the device."""
        x = draw(shape, generator=self.gen)
        return x if self.on_cpu else x.to(self.device)

    def explore(self, obs: np.ndarray) -> np.ndarray:
        if self.host_actor is not None:
            return self.host_actor.sample(obs, self.gen)
        with torch.no_grad():
            out, log_std = self._actor_out(self._obs(obs))
            if self.discrete:  # Gumbel-max: a sample of softmax(logits)
                u = self._noise(torch.rand, out.shape).clamp_(min=1e-20)
                return torch.argmax(out - torch.log(-torch.log(u)), dim=-1).cpu().numpy()
            noise = self._noise(torch.randn, out.shape)
            return torch.tanh(out + noise * log_std.exp()).cpu().numpy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if not deterministic:
            return self.to_env(self.explore(obs))
        if self.host_actor is not None:
            return self.to_env(self.host_actor.mode(obs))
        with torch.no_grad():
            out, _ = self._actor_out(self._obs(obs))
            return self.to_env((out.argmax(-1) if self.discrete else torch.tanh(out)).cpu()
                               .numpy())

    def sample_actions(self, obs_BD: torch.Tensor,
                       n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Box: n reparameterised policy actions per state, [B n, A] in [-1, 1] (state b's rows
        at b n ... b n + n - 1), and their log-densities [B n]; differentiable in the actor."""
        mean, log_std = self._actor_out(obs_BD if n == 1 else obs_BD.repeat_interleave(n, 0))
        return squashed_gaussian(mean, log_std, self._noise(torch.randn, mean.shape))

    def uniform_actions(self, n: int) -> torch.Tensor:
        """Box: n actions uniform on [-1, 1]^A, [n, A], from the learner's noise stream."""
        return self._noise(torch.rand, (n, self.action_dim)) * 2 - 1

    # ---- learning -----------------------------------------------------------------------------
    def q(self, x_BI: torch.Tensor) -> torch.Tensor:
        """Both critics: [2, B, 1] for Q(s, a) (Box), [2, B, |A|] for Q(s) (Discrete)."""
        return self.critics.q(x_BI)

    def critic_penalty(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor,
                       q_KB: torch.Tensor, q_KBA: torch.Tensor | None
                       ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A term added to the loss the critics descend, and metrics about it (their mean over
        the update's minibatches is returned by `update`); SAC adds none. Called once per
        gradient step with Q(s, a) [K, B] of the batch's actions and, Discrete, Q(s, .)."""
        return None, {}

    @torch.no_grad()
    def min_q_action_grad(self, obs_BD: torch.Tensor,
                          a_BA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min_j Q_j(s, a) per row and its gradient with respect to a, without autograd:
        each row through the critic that gives its min (sac_grad.min_critic_action_grad)."""
        hidden: list[torch.Tensor] = []
        q_KB = self.critics.q(torch.cat([obs_BD, a_BA], -1), hidden)[..., 0]
        return min_critic_action_grad(self.critics.layers, self.critics.net.activation == "relu",
                                      hidden, q_KB, self.feature_dim)

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """`gradient_steps` SAC steps, one per minibatch of `batch`; returns mean metrics."""
        lr = self.current_lr(batch.env_steps)
        self.critics.opt.lr = self.alpha_opt.lr = lr
        if self.encoder is not None:
            self.encoder.opt.lr = lr
        self.actor_opt.lr = lr if self.actor_lr is None else self.actor_lr * self.lr_fraction(
            batch.env_steps)
        if self.manual_grad:
            return self.box_step.update(batch, lr)
        obs, actions, next_obs = (self._tensor(x) for x in (batch.obs, batch.actions,
                                                            batch.next_obs))
        if self.encoder is None and obs.dim() > 3:  # images into the MLPs (encoder=mlp)
            obs, next_obs = (x.flatten(2).float() for x in (obs, next_obs))
        rewards = self._tensor(batch.rewards)
        discount_GB = self.gamma * (1.0 - self._tensor(batch.terminated))
        if self.compile:  # the plain-autograd step of sac_compiled, through torch.compile
            from rl_runner.algos.sac_compiled import compiled_update
            return compiled_update(self, obs, actions, rewards, discount_GB, next_obs, lr)
        step = self._discrete_step if self.discrete else self._box_step
        results = [step(obs[g], actions[g], rewards[g], discount_GB[g], next_obs[g])
                   for g in range(len(rewards))]
        means = torch.stack([torch.stack(r) for r, _ in results]).mean(0).tolist()
        metrics = dict(zip(METRICS, means))
        if not self.learn_alpha:
            del metrics["alpha_loss"]
        for key in results[0][1]:  # critic_penalty's metrics
            metrics[key] = sum(extra[key] for _, extra in results) / len(results)
        metrics["learning_rate"] = lr
        return metrics

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """A batch array on the device; from pinned memory (the feeder's, for a GPU) the copy
        runs asynchronously."""
        t = torch.from_numpy(x)
        return t if self.on_cpu else t.to(self.device, non_blocking=True)

    def _inputs(self, obs, next_obs) -> tuple:
        """What the networks take: (critics at s, actor at s, actor at s', target critics at
        s'). The observations themselves, or the CNN's features: with gradient for the critics,
        detached for the actor, the target CNN's for the target critics."""
        if self.encoder is None:
            return obs, obs, next_obs, next_obs
        features = self.encoder.net(obs)
        with torch.no_grad():
            return (features, features.detach(), self.encoder.net(next_obs),
                    self.encoder.target.net(next_obs))

    def _alpha(self) -> torch.Tensor:
        if not self.learn_alpha:
            return self.fixed_alpha
        return self.log_alpha.detach().exp()  # a new tensor: later in-place steps leave it be

    def _alpha_step(self, mean_logp: torch.Tensor) -> torch.Tensor:
        """One Adam step on log alpha; returns the temperature loss before the step.

        J(alpha) = E[-alpha (log pi + target entropy)] (2018b eq. 18), taken in log alpha as SB3
        and CleanRL do; its gradient -(E[log pi] + target) needs no autograd.
        """
        if not self.learn_alpha:
            return mean_logp.new_zeros(())
        gap = mean_logp + self.target_entropy
        loss = -(self.log_alpha.detach()[0] * gap)
        self.alpha_opt.grad.copy_(-gap)
        self.alpha_opt.step()
        return loss

    def _critic_step(self, obs_BD, next_obs_BD, q_KB, q_KBA, y_B) -> tuple:
        """Soft Bellman residual of both critics (2018b eq. 5) plus critic_penalty's term, one
        Adam step (Polyak in _finish); returns the residual and critic_penalty's metrics."""
        qf_loss = 0.5 * (q_KB - y_B).pow(2).mean(1).sum()
        penalty, extra = self.critic_penalty(obs_BD, next_obs_BD, q_KB, q_KBA)
        if self.encoder is None:
            self.critics.step(qf_loss if penalty is None else qf_loss + penalty)
            return qf_loss.detach(), extra
        self.encoder.opt.zero_grad()  # the critics' backward reaches the CNN
        self.critics.step(qf_loss if penalty is None else qf_loss + penalty)
        self.encoder.opt.step()
        return qf_loss.detach(), extra

    def _finish(self, actor_loss: torch.Tensor) -> None:
        """The actor's step (its loss depends on no critic weights), then Polyak averaging."""
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.critics.update_target()
        if self.encoder is not None:
            self.encoder.target.update()
        self.grad_steps += 1

    def _box_step(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD) -> tuple:
        s_q, s_pi, next_pi, next_q = self._inputs(obs_BD, next_obs_BD)
        alpha = self._alpha()
        # one actor forward on s serves the temperature and the actor loss
        a_pi, logp_pi = self.sample_actions(s_pi)
        mean_logp = logp_pi.detach().mean()
        alpha_loss = self._alpha_step(mean_logp)
        with torch.no_grad():  # target (2018b eq. 3): soft value of s' under the target critics
            a_next, logp_next = self.sample_actions(next_pi)
            q_next_KB = self.critics.target_q(torch.cat([next_q, a_next], -1))[..., 0]
            v_next_B = q_next_KB.min(0).values
            if self.backup_entropy:
                v_next_B = v_next_B - alpha * logp_next
            y_B = rewards_B + discount_B * v_next_B
        q_KB = self.q(torch.cat([s_q, actions_BA], -1))[..., 0]
        qf_loss, extra = self._critic_step(obs_BD, next_obs_BD, q_KB, None, y_B)
        # actor (2018b eq. 9, reparameterised) against the critics just updated, as SB3 does.
        # The gradient of -min_j Q_j(s, a_pi) reaches the actor through a_pi alone, so the loss
        # it descends puts a_pi . dQ/da in its place, dQ/da from min_q_action_grad (no autograd).
        q_pi_B, dq_da_BA = self.min_q_action_grad(s_pi, a_pi.detach())
        self._finish((alpha * logp_pi - (a_pi * dq_da_BA).sum(-1)).mean())
        actor_loss = (alpha * logp_pi.detach() - q_pi_B).mean()
        return (qf_loss, actor_loss, alpha[0], alpha_loss, -mean_logp,
                q_KB.detach().mean()), extra

    def _discrete_step(self, obs_BD, actions_B1, rewards_B, discount_B, next_obs_BD) -> tuple:
        s_q, s_pi, next_pi, next_q = self._inputs(obs_BD, next_obs_BD)
        alpha = self._alpha()
        logp_BA = torch.log_softmax(self._actor_out(s_pi)[0], -1)
        p_BA = logp_BA.exp()
        # E_a~pi[log pi(a|s)] in closed form over the categorical (Christodoulou 2019)
        mean_logp = (p_BA.detach() * logp_BA.detach()).sum(-1).mean()
        alpha_loss = self._alpha_step(mean_logp)
        with torch.no_grad():  # V(s') = pi(s')^T [min_j Q-bar_j(s') - alpha log pi(s')]
            logp_next_BA = torch.log_softmax(self._actor_out(next_pi)[0], -1)
            q_next_BA = self.critics.target_q(next_q).min(0).values
            if self.backup_entropy:
                q_next_BA = q_next_BA - alpha * logp_next_BA
            y_B = rewards_B + discount_B * (logp_next_BA.exp() * q_next_BA).sum(-1)
        q_KBA = self.q(s_q)
        index = actions_B1.long().unsqueeze(0).expand(q_KBA.shape[0], -1, -1)
        q_KB = q_KBA.gather(2, index)[..., 0]
        qf_loss, extra = self._critic_step(obs_BD, next_obs_BD, q_KB, q_KBA, y_B)
        # policy loss: pi(s)^T [alpha log pi(s) - min_j Q_j(s)], with Q from the forward above
        # (before this step's critic update), which saves a critic forward per step
        q_min_BA = q_KBA.detach().min(0).values
        actor_loss = (p_BA * (alpha * logp_BA - q_min_BA)).sum(-1).mean()
        self._finish(actor_loss)
        return (qf_loss, actor_loss.detach(), alpha[0], alpha_loss, -mean_logp,
                q_KB.detach().mean()), extra

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # the critics' keys ("critic", "critic_target", "critic_opt") sit at the top level, as
        # before TwinCritic: older checkpoints load unchanged
        state = {"actor": self.actor.state_dict(), **self.critics.state_dict(),
                 "log_alpha": self.log_alpha.detach().clone(),
                 "actor_opt": self.actor_opt.state_dict(),
                 "alpha_opt": self.alpha_opt.state_dict(), "gen": self.gen.get_state(),
                 "grad_steps": self.grad_steps}
        if self.encoder is not None:
            state.update(self.encoder.state_dict())
        return state if self.on_cpu else on_cpu(state)  # files load on a CPU-only machine

    def load_state_dict(self, state: dict) -> None:
        # in place (copy_, which also moves CPU tensors to the device): parameters stay views
        # into the optimizers' flat buffers
        self.actor.load_state_dict(state["actor"])
        self.critics.load_state_dict(state)
        if self.encoder is not None:
            self.encoder.load_state_dict(state)
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]


def on_cpu(tree):
    """A state's tensors copied to the CPU (dicts and lists kept)."""
    if isinstance(tree, dict):
        return {k: on_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(on_cpu(v) for v in tree)
    return tree.detach().cpu() if isinstance(tree, torch.Tensor) else tree
