"""SAC's Box gradient step with hand-written gradients, for vector observations on the CPU.

The same step as SAC._box_step (its autograd path, kept as the reference and for what this one
does not cover), differentiated on paper as td3's: the twin critics' squared error, the
tanh-Gaussian actor's alpha log pi(a|s) - min_j Q_j(s, a) through dQ/da, and the temperature's
loss. Gradients land straight in FlatAdam's flat gradient views (mlp_grad.mlp_backward): no
autograd graph, nothing to zero. The actor's forward on s and s' is one product of 2B rows.
"""
from __future__ import annotations

import torch

from rl_runner.algos.mlp_grad import mlp_backward
from rl_runner.algos.sac_math import LOG_STD_MAX, LOG_STD_MIN, squashed_gaussian
from rl_runner.algos.twin_critic import mlp_forward


class BoxStep:
    """One hand-differentiated SAC gradient step of `sac` (Box actions, vector observations);
    returns the metrics of SAC._box_step as 0-dim tensors, in sac_math.METRICS order."""

    def __init__(self, sac):
        self.sac = sac
        self.relu = sac.critics.net.activation == "relu"
        # (weight, bias) gradient views into the optimizers' flat gradients
        self.actor_grads = [(w.grad, b.grad) for w, b in sac.actor_layers]
        self.critic_grads = [(w.grad, b.grad) for w, b in sac.critics.layers]
        self.noise: torch.Tensor | None = None  # [2B, A], refilled each step

    def _noise(self, rows: int) -> torch.Tensor:
        """Noise for the actions at s (rows :B) and at s' (rows B:), drawn as two [B, A] draws
        from the learner's generator in that order: the stream of the autograd path."""
        a = self.sac.action_dim
        if self.noise is None or self.noise.shape[0] != 2 * rows:
            self.noise = torch.empty(2 * rows, a)
        torch.randn((rows, a), generator=self.sac.gen, out=self.noise[:rows])
        torch.randn((rows, a), generator=self.sac.gen, out=self.noise[rows:])
        return self.noise

    def __call__(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD) -> tuple:
        sac, B, A = self.sac, len(rewards_B), self.sac.action_dim
        alpha = sac._alpha()
        # the actor at s and s' (its weights change only at the end of the step): one product
        hidden: list[torch.Tensor] = []
        out_NO = mlp_forward(sac.actor_layers, sac.act_fn, torch.cat([obs_BD, next_obs_BD]),
                             hidden)[0]
        raw_NA = out_NO[:, A:]
        log_std_NA = raw_NA.clamp(LOG_STD_MIN, LOG_STD_MAX)
        noise_NA = self._noise(B)
        a_NA, logp_N = squashed_gaussian(out_NO[:, :A], log_std_NA, noise_NA)
        logp_pi, a_pi = logp_N[:B], a_NA[:B]
        mean_logp = logp_pi.mean()
        alpha_loss = sac._alpha_step(mean_logp)
        # target (2018b eq. 3): the soft value of s' under the target critics
        q_next_KB = sac.critics.target_q(torch.cat([next_obs_BD, a_NA[B:]], -1))[..., 0]
        v_next_B = q_next_KB.min(0).values
        if sac.backup_entropy:
            v_next_B = v_next_B - alpha * logp_N[B:]
        y_B = rewards_B + discount_B * v_next_B
        # critics: d/dQ_j of 0.5 sum_j mean_b (Q_j - y)^2 is (Q_j - y) / B
        c_hidden: list[torch.Tensor] = []
        x_BI = torch.cat([obs_BD, actions_BA], -1)
        q_KB1 = sac.critics.q(x_BI, c_hidden)
        err_KB1 = q_KB1 - y_B[:, None]
        mlp_backward(sac.critics.layers, self.relu, x_BI, c_hidden, err_KB1 * (1 / B),
                     grads=self.critic_grads)
        sac.critics.opt.step()
        # actor (2018b eq. 9) against the critics just stepped: dQ/da of the min critic
        q_pi_B, dq_da_BA = sac.min_q_action_grad(obs_BD, a_pi)
        g_out_1BO = self._actor_out_grad(alpha, a_pi, dq_da_BA, noise_NA[:B],
                                         log_std_NA[:B], raw_NA[:B])
        mlp_backward(sac.actor_layers, self.relu, obs_BD, [h[:, :B] for h in hidden],
                     g_out_1BO, grads=self.actor_grads)
        sac.actor_opt.step()
        sac.critics.update_target()
        sac.grad_steps += 1
        qf_loss = 0.5 * err_KB1.pow(2).mean(1).sum()
        actor_loss = (alpha * logp_pi - q_pi_B).mean()
        return qf_loss, actor_loss, alpha[0], alpha_loss, -mean_logp, q_KB1.mean()

    @staticmethod
    def _actor_out_grad(alpha, a_BA, dq_da_BA, noise_BA, log_std_BA, raw_BA) -> torch.Tensor:
        """d/d(actor output) of mean_b [alpha log pi(a_b|s_b) - a_b . dQ/da_b], [1, B, 2A].

        With u = mean + std noise and a = tanh(u): d log pi / du = 2 tanh(u) (from the
        -log(1 - tanh(u)^2) term), da/du = 1 - a^2, du/d log std = std noise, and log pi holds
        -log std itself; the clamp of the log-std passes the gradient inside its bounds only.
        """
        scale = 1.0 / len(a_BA)
        g_u = (2 * alpha) * a_BA - dq_da_BA * (1 - a_BA * a_BA)
        g_u.mul_(scale)
        g_log_std = torch.addcmul(alpha * -scale, g_u, noise_BA * log_std_BA.exp())
        g_log_std.mul_((raw_BA >= LOG_STD_MIN) & (raw_BA <= LOG_STD_MAX))
        return torch.cat([g_u, g_log_std], -1)[None]
