"""SAC's Box gradient step with hand-written gradients, for vector observations on the CPU.

The same step as SAC._box_step (its autograd path, kept as the reference and for what this one
does not cover), differentiated on paper as td3's: the twin critics' squared error, the
tanh-Gaussian actor's alpha log pi(a|s) - min_j Q_j(s, a) through dQ/da, and the temperature's
loss. Gradients land straight in FlatAdam's flat gradient views (as mlp_grad.mlp_backward): no
autograd graph, nothing to zero. The actor's forward on s and s' is one product of 2B rows, and
hidden layers are written into buffers kept from step to step: fresh activations each step
cost cache misses on every elementwise pass over them.
"""
from __future__ import annotations

import torch

from rl_runner.algos.sac_math import LOG_STD_MAX, LOG_STD_MIN, squashed_gaussian
from rl_runner.algos.twin_critic import NARROW, narrow_output


class Buffers:
    """Tensors kept between steps, by name; made again where the shape changes."""

    def __init__(self):
        self.kept: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        t = self.kept.get(name)
        if t is None or t.shape != shape:
            t = self.kept[name] = torch.empty(shape)
        return t

    def hidden(self, name: str, layers: list, rows: int) -> list[torch.Tensor]:
        """One [K, rows, H] buffer per hidden layer of `layers`."""
        return [self.get(f"{name}{i}", w.shape[0], rows, w.shape[2])
                for i, (w, _) in enumerate(layers[:-1])]


def forward(layers: list, relu: bool, x_BI: torch.Tensor,
            hidden: list[torch.Tensor]) -> torch.Tensor:
    """twin_critic.mlp_forward without autograd, its hidden layers written into `hidden`."""
    w = layers[0][0]
    h = x_BI.unsqueeze(0).expand(w.shape[0], *x_BI.shape)
    for (w, b), out in zip(layers[:-1], hidden):
        h = torch.baddbmm(b, h, w, out=out)
        h.relu_() if relu else h.tanh_()
    w, b = layers[-1]
    return narrow_output(h, w, b) if w.shape[-1] <= NARROW else torch.baddbmm(b, h, w)


def _through_activation(g: torch.Tensor, h: torch.Tensor, relu: bool) -> torch.Tensor:
    """g times the activation's derivative, from its output h; in place."""
    if relu:
        return torch.ops.aten.threshold_backward.grad_input(g, h, 0, grad_input=g)
    return torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)


def backward(layers: list, relu: bool, x_BI: torch.Tensor, hidden: list[torch.Tensor],
             g_KBO: torch.Tensor, grads: list, work: list[torch.Tensor]) -> None:
    """mlp_grad.mlp_backward's weight and bias gradients (into `grads`), with the gradient at
    each hidden layer written into `work` (one [K, B, H] per hidden layer) instead of fresh
    tensors."""
    g = g_KBO
    for i in range(len(layers) - 1, -1, -1):
        w = layers[i][0]
        h_in = hidden[i - 1] if i else x_BI.unsqueeze(0).expand(w.shape[0], *x_BI.shape)
        gw, gb = grads[i]
        if g.shape[-1] <= NARROW:  # dw^T = g^T h, the layout of narrow_output
            torch.bmm(g.transpose(1, 2), h_in, out=gw.transpose(1, 2))
        else:
            torch.bmm(h_in.transpose(1, 2), g, out=gw)
        torch.sum(g, 1, keepdim=True, out=gb)
        if i == 0:
            return
        below = work[i - 1]
        if g.shape[-1] == 1:  # one output column: an outer product
            torch.mul(g, w.transpose(1, 2), out=below)
        else:
            torch.bmm(g, w.transpose(1, 2), out=below)
        g = _through_activation(below, h_in, relu)


def min_critic_action_grad(layers: list, relu: bool, hidden: list[torch.Tensor],
                           q_KB: torch.Tensor, input_from: int, bufs: Buffers | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """min_j Q_j per row [B] and its gradient with respect to the critics' inputs from column
    `input_from` on (the action) [B, A], from a forward whose hidden layers are `hidden`.

    Each row's min comes from one critic, so each row is backpropagated through that critic
    alone: the rows sorted by critic, each critic's block one matrix product per layer, half
    the multiply-adds of a pass through both critics. No weight gradients are made. `bufs`:
    where the [B, H] intermediates are kept between calls.
    """
    bufs = bufs or Buffers()
    K, B = q_KB.shape
    q_min_B, which_B = q_KB.min(0)
    order_B = torch.argsort(which_B, stable=True)  # critic 0's rows, then critic 1's, ...
    counts = torch.bincount(which_B, minlength=K).tolist()
    which_sorted_B = which_B[order_B]
    flat_B = which_sorted_B * B + order_B  # each sorted row in the [K B, H] hidden layers
    w_out = layers[-1][0][:, :, 0]  # dQ / d(last hidden output), per critic [K, H]
    g = torch.index_select(w_out, 0, which_sorted_B, out=bufs.get("g_out", B, w_out.shape[1]))
    for i in range(len(hidden) - 1, -1, -1):
        flat = hidden[i].reshape(K * B, -1)
        h = torch.index_select(flat, 0, flat_B, out=bufs.get(f"rows{i}", B, flat.shape[1]))
        g = _through_activation(g, h, relu)
        w = layers[i][0] if i else layers[0][0][:, input_from:]
        below = bufs.get(f"below{i}", B, w.shape[1])
        start = 0
        for k, n in enumerate(counts):
            if n:
                torch.mm(g[start:start + n], w[k].T, out=below[start:start + n])
            start += n
        g = below
    return q_min_B, torch.empty_like(g).index_copy_(0, order_B, g)


class BoxStep:
    """One hand-differentiated SAC gradient step of `sac` (Box actions, vector observations);
    returns the metrics of SAC._box_step as 0-dim tensors, in sac_math.METRICS order."""

    def __init__(self, sac):
        self.sac = sac
        self.relu = sac.critics.net.activation == "relu"
        # (weight, bias) gradient views into the optimizers' flat gradients
        self.actor_grads = [(w.grad, b.grad) for w, b in sac.actor_layers]
        self.critic_grads = [(w.grad, b.grad) for w, b in sac.critics.layers]
        self.bufs = Buffers()

    def _noise(self, rows: int) -> torch.Tensor:
        """Noise for the actions at s (rows :B) and at s' (rows B:), drawn as two [B, A] draws
        from the learner's generator in that order: the stream of the autograd path."""
        noise = self.bufs.get("noise", 2 * rows, self.sac.action_dim)
        noise[:rows].normal_(generator=self.sac.gen)
        noise[rows:].normal_(generator=self.sac.gen)
        return noise

    def __call__(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD) -> tuple:
        sac, B, A = self.sac, len(rewards_B), self.sac.action_dim
        alpha = sac._alpha()
        critics, c_layers = sac.critics, sac.critics.layers
        # the actor at s and s' (its weights change only at the end of the step): one product
        a_hidden = self.bufs.hidden("actor", sac.actor_layers, 2 * B)
        out_NO = forward(sac.actor_layers, self.relu, torch.cat([obs_BD, next_obs_BD]),
                         a_hidden)[0]
        raw_NA = out_NO[:, A:]
        log_std_NA = raw_NA.clamp(LOG_STD_MIN, LOG_STD_MAX)
        noise_NA = self._noise(B)
        a_NA, logp_N = squashed_gaussian(out_NO[:, :A], log_std_NA, noise_NA)
        logp_pi, a_pi = logp_N[:B], a_NA[:B]
        mean_logp = logp_pi.mean()
        alpha_loss = sac._alpha_step(mean_logp)
        # target (2018b eq. 3): the soft value of s' under the target critics. The critics'
        # three forwards share one set of hidden buffers: each is done with before the next
        c_hidden = self.bufs.hidden("critic", c_layers, B)
        q_next_KB = forward(critics.target_layers, self.relu,
                            torch.cat([next_obs_BD, a_NA[B:]], -1), c_hidden)[..., 0]
        v_next_B = q_next_KB.min(0).values
        if sac.backup_entropy:
            v_next_B = v_next_B - alpha * logp_N[B:]
        y_B = rewards_B + discount_B * v_next_B
        # critics: d/dQ_j of 0.5 sum_j mean_b (Q_j - y)^2 is (Q_j - y) / B
        x_BI = torch.cat([obs_BD, actions_BA], -1)
        q_KB1 = forward(c_layers, self.relu, x_BI, c_hidden)
        err_KB1 = q_KB1 - y_B[:, None]
        backward(c_layers, self.relu, x_BI, c_hidden, err_KB1 * (1 / B), self.critic_grads,
                 self.bufs.hidden("critic_grad", c_layers, B))
        critics.opt.step()
        # actor (2018b eq. 9) against the critics just stepped: dQ/da of the min critic
        q_pi_KB = forward(c_layers, self.relu, torch.cat([obs_BD, a_pi], -1), c_hidden)[..., 0]
        q_pi_B, dq_da_BA = min_critic_action_grad(c_layers, self.relu, c_hidden, q_pi_KB,
                                                  sac.feature_dim, self.bufs)
        g_out_1BO = self._actor_out_grad(alpha, a_pi, dq_da_BA, noise_NA[:B],
                                         log_std_NA[:B], raw_NA[:B])
        backward(sac.actor_layers, self.relu, obs_BD, [h[:, :B] for h in a_hidden], g_out_1BO,
                 self.actor_grads, self.bufs.hidden("actor_grad", sac.actor_layers, B))
        sac.actor_opt.step()
        critics.update_target()
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
