"""SAC (Haarnoja et al. 2018) with twin critics and a learned temperature; discrete SAC.

Twin Q critics with Polyak-averaged targets, a tanh-squashed Gaussian actor for Box actions, and
for Discrete actions the formulation of Christodoulou (2019): expectations over the categorical
policy instead of the reparameterisation trick. "2018b eq. N" is arXiv:1812.05905 (SAC Algorithms
and Applications), "2018a" is arXiv:1801.01290 (the first SAC paper).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_runner.algos.base import OffPolicyAlgorithm
from rl_runner.batches import ReplayBatch
from rl_runner.nets import LOG_2PI, ParallelMLP
from rl_runner.optim import FlatAdam, share_flat
from rl_runner.params import Activation, NonNegativeFloat, PositiveFloat

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # as SB3: keeps exp(log_std) finite early in training
LOG_2 = math.log(2.0)
METRICS = ("qf_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "qf_values")


def squashed_gaussian(mean_BA: torch.Tensor, log_std_BA: torch.Tensor,
                      noise_BA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(mean + std * noise) and its exact log-density.

    Change of variables (Haarnoja et al. 2018a, appendix C, eq. 21):
    log pi(a|s) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2), and
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) holds exactly without the usual +1e-6.
    """
    u_BA = mean_BA + noise_BA * log_std_BA.exp()
    log_det_BA = 2.0 * (LOG_2 - u_BA - F.softplus(-2.0 * u_BA))
    logp_B = (-0.5 * noise_BA.pow(2) - log_std_BA - 0.5 * LOG_2PI - log_det_BA).sum(-1)
    return torch.tanh(u_BA), logp_B


def narrow_output(h_KBI: torch.Tensor, w_KIO: torch.Tensor, c_K1O: torch.Tensor) -> torch.Tensor:
    """h @ w + c computed as (w^T h^T + c^T)^T: [K, O, B] is the layout MKL handles fast."""
    out_KOB = torch.baddbmm(c_K1O.transpose(1, 2), w_KIO.transpose(1, 2), h_KBI.transpose(1, 2))
    return out_KOB.transpose(1, 2)


class NarrowOutput(torch.autograd.Function):
    """out[k] = h[k] @ w[k] + c[k] for an output layer of a few columns (Q values, a Gaussian).

    Measured on CPU (MKL, one thread, h of [2, 256, 256], one output column): baddbmm takes
    0.16 ms forward + 0.4 ms backward, ~10x its arithmetic; as [K, O, B] with dw^T = g^T h it takes
    0.05 + 0.15 ms. Saves ~0.7 ms (6%) of a one-thread Pendulum update (paired A/B).
    """

    @staticmethod
    def forward(ctx, h_KBI: torch.Tensor, w_KIO: torch.Tensor, c_K1O: torch.Tensor):
        ctx.save_for_backward(h_KBI, w_KIO)
        return narrow_output(h_KBI, w_KIO, c_K1O)

    @staticmethod
    def backward(ctx, g_KBO: torch.Tensor):
        h_KBI, w_KIO = ctx.saved_tensors
        g_h = g_w = g_c = None
        if ctx.needs_input_grad[0]:  # one column: an outer product, as a broadcast multiply
            g_h = (g_KBO * w_KIO.transpose(1, 2) if g_KBO.shape[-1] == 1
                   else torch.bmm(g_KBO, w_KIO.transpose(1, 2)))
        if ctx.needs_input_grad[1]:
            g_w = torch.bmm(g_KBO.transpose(1, 2), h_KBI).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            g_c = g_KBO.sum(1, keepdim=True)
        return g_h, g_w, g_c


NARROW = 8  # output widths up to this go through NarrowOutput
# multiply-adds in the widest hidden-layer matmul of a minibatch from which a second thread pays
# off. Update time on this 2-core CPU, 1 thread vs 2 (Pendulum, best of 3 x 100 updates):
# 64x64 nets, batch 64: 4.4 vs 4.7 ms; 64x64/256 and 128x128/64 (1M): 6.1 vs 5.9, 5.4 vs 4.9;
# 128x128/256 and 256x256/64 (4.2M): 1.3x faster; 256x256/256 (16.8M): 26.7 vs 17.4 ms
THREADS_FROM_MACS = 1 << 20


def mlp_forward(layers: list, act, x_BI: torch.Tensor,
                hidden: list | None = None) -> torch.Tensor:
    """ParallelMLP.forward over cached (weight, bias) pairs; output [K, B, out].
    `hidden`, when given, receives each hidden layer's output [K, B, H]."""
    w, _ = layers[0]
    h = x_BI.unsqueeze(0).expand(w.shape[0], *x_BI.shape)
    for w, b in layers[:-1]:
        h = act(torch.baddbmm(b, h, w))
        if hidden is not None:
            hidden.append(h)
    w, b = layers[-1]
    if w.shape[-1] > NARROW:
        return torch.baddbmm(b, h, w)
    return NarrowOutput.apply(h, w, b) if torch.is_grad_enabled() else narrow_output(h, w, b)


class SAC(OffPolicyAlgorithm):
    """Soft actor-critic with twin critics, target networks and automatic temperature."""

    name = "sac"

    def __init__(self, *, ent_coef: NonNegativeFloat | None = None,
                 alpha_init: PositiveFloat = 1.0, target_entropy: float | None = None,
                 target_entropy_scale: float = 0.8, activation: Activation = "relu", **kwargs):
        super().__init__(**kwargs)
        hidden = self.hidden_sizes
        if self.discrete:  # Q(s) gives one value per action; the actor gives logits
            critic_in, q_out, actor_out = self.obs_dim, self.n_actions, self.n_actions
            # a fraction of the maximum entropy log|A| (0.98 in Christodoulou 2019; see sac.yaml)
            auto_target = target_entropy_scale * math.log(self.n_actions)
        else:  # Q(s, a); the actor gives the mean and log-std of u, a = tanh(u)
            self.action_dim = len(self.action_center)
            critic_in, q_out, actor_out = self.obs_dim + self.action_dim, 1, 2 * self.action_dim
            auto_target = -float(self.action_dim)  # -dim(A), as in Haarnoja et al. 2018b
        self.target_entropy = auto_target if target_entropy is None else target_entropy
        self.actor = ParallelMLP(self.obs_dim, hidden, actor_out, k=1, activation=activation,
                                 out_gains=(0.01,))
        # both critics in one chain of batched matmuls: output [2, B, q_out]
        self.critic = ParallelMLP(critic_in, hidden, q_out, k=2, activation=activation,
                                  out_gains=(1.0, 1.0))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = FlatAdam(self.actor.parameters(), lr=self.lr)
        self.critic_opt = FlatAdam(self.critic.parameters(), lr=self.lr)
        # the target critics are one flat tensor, Polyak-averaged with a single lerp_
        self.target_flat = self.critic_opt.flat.clone()
        share_flat(self.critic_target, self.target_flat)
        self.act_fn = self.actor.act
        self.actor_layers, self.critic_layers, self.target_layers = (
            list(zip(m.weights, m.biases)) for m in (self.actor, self.critic, self.critic_target))
        self.learn_alpha = ent_coef is None  # else a fixed temperature alpha = ent_coef
        self.fixed_alpha = torch.full((1,), 0.0 if ent_coef is None else float(ent_coef))
        self.log_alpha = nn.Parameter(torch.full((1,), math.log(alpha_init)))
        self.alpha_opt = FlatAdam([self.log_alpha], lr=self.lr)
        self.gen = torch.Generator().manual_seed(self.seed)
        # an extra term for the critics' loss, (s, s', Q(s, a) [K, B], Q(s, .) [K, B, |A|] or
        # None) -> scalar; cql sets it, sac leaves it None
        self.critic_penalty = None
        # cql's settings: the actor's lr as a fraction of lr; the entropy term in the target
        self.actor_lr_scale, self.backup_entropy = 1.0, True

    def preferred_threads(self, cores: int) -> int:
        h = self.hidden_sizes
        macs = self.batch_size * max((a * b for a, b in zip(h, h[1:])), default=0)
        return cores if macs >= THREADS_FROM_MACS else 1

    # ---- acting -------------------------------------------------------------------------------
    def _actor_out(self, obs_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (Discrete), or the mean and clamped log-std of the pre-tanh Gaussian (Box)."""
        out_BO = mlp_forward(self.actor_layers, self.act_fn, obs_BD)[0]
        if self.discrete:
            return out_BO, None
        a = self.action_dim
        return out_BO[:, :a], out_BO[:, a:].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _obs(self, obs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(obs, np.float32).reshape(len(obs), -1))

    @torch.no_grad()
    def explore(self, obs: np.ndarray) -> np.ndarray:
        out, log_std = self._actor_out(self._obs(obs))
        if self.discrete:  # Gumbel-max: a sample of softmax(logits)
            u = torch.rand(out.shape, generator=self.gen).clamp_(min=1e-20)
            return torch.argmax(out - torch.log(-torch.log(u)), dim=-1).numpy()
        noise = torch.randn(out.shape, generator=self.gen)
        return torch.tanh(out + noise * log_std.exp()).numpy()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if not deterministic:
            return self.to_env(self.explore(obs))
        out, _ = self._actor_out(self._obs(obs))
        return self.to_env((out.argmax(-1) if self.discrete else torch.tanh(out)).numpy())

    # ---- learning -----------------------------------------------------------------------------
    def q(self, x_BI: torch.Tensor) -> torch.Tensor:
        """Both critics: [2, B, 1] for Q(s, a) (Box), [2, B, |A|] for Q(s) (Discrete)."""
        return mlp_forward(self.critic_layers, self.act_fn, x_BI)

    def target(self, x_BI: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.target_layers, self.act_fn, x_BI)

    @torch.no_grad()
    def min_q_action_grad(self, obs_BD: torch.Tensor,
                          a_BA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min_j Q_j(s, a) per row and its gradient with respect to a, without autograd.

        Each row's min comes from one critic, so each row is backpropagated through that critic
        alone: half the multiply-adds of autograd's pass through both critics, which multiplies
        the other critic's rows by zero. No graph is built and no weight gradients are made.
        """
        hidden: list[torch.Tensor] = []
        q_KB = mlp_forward(self.critic_layers, self.act_fn, torch.cat([obs_BD, a_BA], -1),
                           hidden)[..., 0]
        q_min_B, which_B = q_KB.min(0)
        w_out = self.critic_layers[-1][0]
        # each critic's rows, padded with row 0 to one length (its results are dropped): one bmm
        rows = [(which_B == k).nonzero()[:, 0] for k in range(w_out.shape[0])]
        n = max(len(r) for r in rows)
        index_KN = torch.stack([torch.cat([r, r.new_zeros(n - len(r))]) for r in rows])
        member_K1 = torch.arange(len(rows)).unsqueeze(1)
        g = w_out.transpose(1, 2).expand(-1, n, -1)  # dQ / d(last hidden output) [K, N, H]
        for i in range(len(hidden) - 1, -1, -1):
            out = hidden[i][member_K1, index_KN]
            g = g * (out > 0) if self.critic.activation == "relu" else g * (1 - out * out)
            w = self.critic_layers[i][0]
            g = torch.bmm(g, (w if i else w[:, self.obs_dim:]).transpose(1, 2))
        grad_BA = torch.empty_like(a_BA)
        for k, r in enumerate(rows):
            grad_BA[r] = g[k, :len(r)]
        return q_min_B, grad_BA

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """`gradient_steps` SAC steps, one per minibatch of `batch`; returns mean metrics."""
        lr = self.current_lr(batch.env_steps)
        self.critic_opt.lr = self.alpha_opt.lr = lr
        self.actor_opt.lr = lr * self.actor_lr_scale
        obs, actions, next_obs = (torch.from_numpy(x) for x in (batch.obs, batch.actions,
                                                                batch.next_obs))
        rewards = torch.from_numpy(batch.rewards)
        discount_GB = self.gamma * (1.0 - torch.from_numpy(batch.terminated))
        step = self._discrete_step if self.discrete else self._box_step
        stats = [step(obs[g], actions[g], rewards[g], discount_GB[g], next_obs[g])
                 for g in range(len(rewards))]
        means = torch.stack([torch.stack(s) for s in stats]).mean(0).tolist()
        metrics = dict(zip(METRICS, means))
        if not self.learn_alpha:
            del metrics["alpha_loss"]
        metrics["learning_rate"] = lr
        return metrics

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

    def _critic_step(self, q_KB: torch.Tensor, y_B: torch.Tensor,
                     penalty: torch.Tensor | None = None) -> torch.Tensor:
        """Soft Bellman residual of both critics (2018b eq. 5), one Adam step; Polyak later.
        `penalty` (cql's conservative term) is added to the loss the critics descend."""
        qf_loss = 0.5 * (q_KB - y_B).pow(2).mean(1).sum()
        self.critic_opt.zero_grad()
        (qf_loss if penalty is None else qf_loss + penalty).backward()
        self.critic_opt.step()
        return qf_loss.detach()

    def _finish(self, actor_loss: torch.Tensor) -> None:
        """The actor's step (its loss depends on no critic weights), then Polyak averaging."""
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.target_flat.lerp_(self.critic_opt.flat, self.tau)  # Q-bar <- tau Q + (1-tau) Q-bar
        self.grad_steps += 1

    def _box_step(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD) -> tuple:
        alpha = self._alpha()
        # one actor forward on s serves the temperature and the actor loss
        mean, log_std = self._actor_out(obs_BD)
        a_pi, logp_pi = squashed_gaussian(mean, log_std, torch.randn(mean.shape,
                                                                      generator=self.gen))
        mean_logp = logp_pi.detach().mean()
        alpha_loss = self._alpha_step(mean_logp)
        with torch.no_grad():  # target (2018b eq. 3): soft value of s' under the target critics
            n_mean, n_log_std = self._actor_out(next_obs_BD)
            a_next, logp_next = squashed_gaussian(n_mean, n_log_std,
                                                  torch.randn(n_mean.shape, generator=self.gen))
            q_next_KB = self.target(torch.cat([next_obs_BD, a_next], -1))[..., 0]
            v_next_B = q_next_KB.min(0).values
            if self.backup_entropy:
                v_next_B = v_next_B - alpha * logp_next
            y_B = rewards_B + discount_B * v_next_B
        q_KB = self.q(torch.cat([obs_BD, actions_BA], -1))[..., 0]
        penalty = self.critic_penalty and self.critic_penalty(obs_BD, next_obs_BD, q_KB, None)
        qf_loss = self._critic_step(q_KB, y_B, penalty)
        # actor (2018b eq. 9, reparameterised) against the critics just updated, as SB3 does.
        # The gradient of -min_j Q_j(s, a_pi) reaches the actor through a_pi alone, so the loss
        # it descends puts a_pi . dQ/da in its place, dQ/da from min_q_action_grad (no autograd).
        q_pi_B, dq_da_BA = self.min_q_action_grad(obs_BD, a_pi.detach())
        self._finish((alpha * logp_pi - (a_pi * dq_da_BA).sum(-1)).mean())
        actor_loss = (alpha * logp_pi.detach() - q_pi_B).mean()
        return (qf_loss, actor_loss, alpha[0], alpha_loss, -mean_logp, q_KB.detach().mean())

    def _discrete_step(self, obs_BD, actions_B1, rewards_B, discount_B, next_obs_BD) -> tuple:
        alpha = self._alpha()
        logp_BA = torch.log_softmax(self._actor_out(obs_BD)[0], -1)
        p_BA = logp_BA.exp()
        # E_a~pi[log pi(a|s)] in closed form over the categorical (Christodoulou 2019)
        mean_logp = (p_BA.detach() * logp_BA.detach()).sum(-1).mean()
        alpha_loss = self._alpha_step(mean_logp)
        with torch.no_grad():  # V(s') = pi(s')^T [min_j Q-bar_j(s') - alpha log pi(s')]
            logp_next_BA = torch.log_softmax(self._actor_out(next_obs_BD)[0], -1)
            q_next_BA = self.target(next_obs_BD).min(0).values
            v_next_B = (logp_next_BA.exp() * (q_next_BA - alpha * logp_next_BA)).sum(-1)
            y_B = rewards_B + discount_B * v_next_B
        q_KBA = self.q(obs_BD)
        index = actions_B1.long().unsqueeze(0).expand(q_KBA.shape[0], -1, -1)
        q_KB = q_KBA.gather(2, index)[..., 0]
        penalty = self.critic_penalty and self.critic_penalty(obs_BD, next_obs_BD, q_KB, q_KBA)
        qf_loss = self._critic_step(q_KB, y_B, penalty)
        # policy loss: pi(s)^T [alpha log pi(s) - min_j Q_j(s)], with Q from the forward above
        # (before this step's critic update), which saves a critic forward per step
        q_min_BA = q_KBA.detach().min(0).values
        actor_loss = (p_BA * (alpha * logp_BA - q_min_BA)).sum(-1).mean()
        self._finish(actor_loss)
        return (qf_loss, actor_loss.detach(), alpha[0], alpha_loss, -mean_logp,
                q_KB.detach().mean())

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.target_flat.clone(),
                "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "gen": self.gen.get_state(),
                "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        # in place: parameters stay views into the optimizers' flat buffers
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        with torch.no_grad():
            self.target_flat.copy_(state["critic_target"])
            self.log_alpha.copy_(state["log_alpha"])
        for name in ("actor_opt", "critic_opt", "alpha_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
