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

import numpy as np
import torch

from rl_runner.algos.mlp_grad import FlushDenormals, through_activation
from rl_runner.algos.sac_math import LOG_2, LOG_STD_MAX, LOG_STD_MIN, METRICS
from rl_runner.algos.twin_critic import NARROW
from rl_runner.nets import LOG_2PI


class Buffers:
    """Tensors kept between steps on one device, by name; made again where the shape
    changes."""

    def __init__(self, device: torch.device = torch.device("cpu")):
        self.device = device
        self.kept: dict[str, torch.Tensor] = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        t = self.kept.get(name)
        if t is None or t.shape != shape:
            t = self.kept[name] = torch.empty(shape, device=self.device)
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
    if w.shape[-1] > 1:
        return torch.baddbmm(b, h, w)
    # one output column (a Q value): a matrix-vector product per member, ~4x faster than a
    # one-column (b)addbmm or twin_critic.narrow_output here
    out = h.new_empty(w.shape[0], h.shape[1], 1)
    for k in range(w.shape[0]):
        torch.addmv(b[k, 0], h[k], w[k, :, 0], out=out[k, :, 0])
    return out


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
        if g.shape[-1] <= NARROW:  # dw^T = g^T h: [K, O, B] x [K, B, I] is fast for small O
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
        g = through_activation(below, h_in, relu)


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
    bufs = bufs or Buffers(q_KB.device)
    K, B = q_KB.shape
    q_min_B, which_sorted_B, order_B, flat_B, counts = rows_by_min_critic(q_KB)
    w_out = layers[-1][0][:, :, 0]  # dQ / d(last hidden output), per critic [K, H]
    g = torch.index_select(w_out, 0, which_sorted_B, out=bufs.get("g_out", B, w_out.shape[1]))
    for i in range(len(hidden) - 1, -1, -1):
        flat = hidden[i].reshape(K * B, -1)
        h = torch.index_select(flat, 0, flat_B, out=bufs.get(f"rows{i}", B, flat.shape[1]))
        g = through_activation(g, h, relu)
        w = layers[i][0] if i else layers[0][0][:, input_from:]
        below = bufs.get(f"below{i}", B, w.shape[1])
        start = 0
        for k, n in enumerate(counts):
            if n:
                torch.mm(g[start:start + n], w[k].T, out=below[start:start + n])
            start += n
        g = below
    if g.device.type == "cpu":  # numpy's scatter: ~2 us against index_copy_'s ~12
        grad = np.empty_like(g.numpy())
        grad[order_B.numpy()] = g.numpy()
        return q_min_B, torch.from_numpy(grad)
    return q_min_B, torch.empty_like(g).index_copy_(0, order_B, g)


def rows_by_min_critic(q_KB: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(min_j Q_j per row [B], the critic giving each row's min in sorted order [B], the rows
    sorted by that critic, stably [B], each sorted row's place in [K B] rows of hidden layers
    [B], how many rows each critic gives as a list). On the CPU in numpy, where each of these
    ops costs a microsecond or two against torch's 10-50: ~70 us of a ~4.2 ms sac pendulum
    update (2 threads, Zen 5)."""
    K, B = q_KB.shape
    if q_KB.device.type != "cpu":
        q_min_B, which_B = q_KB.min(0)
        order_B = torch.argsort(which_B, stable=True)
        counts = torch.bincount(which_B, minlength=K).tolist()
        which_sorted_B = which_B[order_B]
        return q_min_B, which_sorted_B, order_B, which_sorted_B * B + order_B, counts
    q = q_KB.numpy()
    which_B = q.argmin(0)  # the first critic where both give the min, as torch's min
    order_B = np.argsort(which_B, kind="stable")
    which_sorted_B = which_B[order_B]
    counts = np.bincount(which_B, minlength=K).tolist()
    return tuple(torch.from_numpy(x) for x in (
        q[which_B, np.arange(B)], which_sorted_B, order_B, which_sorted_B * B + order_B)) + (
        counts,)


class BoxStep:
    """One hand-differentiated SAC gradient step of `sac` (Box actions, vector observations)
    on numpy minibatch arrays; returns the metrics of SAC._box_step as floats, in
    sac_math.METRICS order. The matrix products run in torch; the per-row arithmetic on [B, A]
    and [B] arrays (the squashed Gaussian, the target, the actor's output gradient, the
    temperature, the metrics) runs in numpy, where an operation costs about a microsecond
    against several for a torch call."""

    def __init__(self, sac):
        self.sac = sac
        self.relu = sac.critics.net.activation == "relu"
        # (weight, bias) gradient views into the optimizers' flat gradients
        self.actor_grads = [(w.grad, b.grad) for w, b in sac.actor_layers]
        self.critic_grads = [(w.grad, b.grad) for w, b in sac.critics.layers]
        # log alpha and its gradient as numpy views (parameter and gradient live in alpha_opt)
        self.log_alpha, self.alpha_grad = sac.alpha_opt.flat.numpy(), sac.alpha_opt.grad.numpy()
        self.bufs = Buffers()

    def update(self, batch, lr: float) -> dict[str, float]:
        """SAC.update's gradient steps, one per minibatch of the batch's numpy arrays; its mean
        metrics. Denormals are flushed: Adam's moments of dead units stay off the slow path."""
        G, B = batch.rewards.shape
        obs, next_obs = (np.asarray(x, np.float32).reshape(G, B, -1)
                         for x in (batch.obs, batch.next_obs))
        discount_GB = self.sac.gamma * (1.0 - batch.terminated)
        with torch.no_grad(), FlushDenormals():
            rows = [self(obs[g], batch.actions[g], batch.rewards[g], discount_GB[g], next_obs[g])
                    for g in range(G)]
        metrics = dict(zip(METRICS, np.mean(rows, 0).tolist()))
        if not self.sac.learn_alpha:
            del metrics["alpha_loss"]
        metrics["learning_rate"] = lr
        return metrics

    def _noise(self, rows: int) -> np.ndarray:
        """Noise for the actions at s (rows :B) and at s' (rows B:), drawn as two [B, A] draws
        from the learner's generator in that order: the stream of the autograd path."""
        noise = self.bufs.get("noise", 2 * rows, self.sac.action_dim)
        noise[:rows].normal_(generator=self.sac.gen)
        noise[rows:].normal_(generator=self.sac.gen)
        return noise.numpy()

    def _alpha_step(self, mean_logp: np.float32) -> float:
        """SAC._alpha_step on the numpy views: one Adam step on log alpha; the loss before."""
        if not self.sac.learn_alpha:
            return 0.0
        gap = mean_logp + self.sac.target_entropy
        loss = -(self.log_alpha[0] * gap)
        self.alpha_grad[0] = -gap
        self.sac.alpha_opt.step()
        return float(loss)

    def __call__(self, obs_BD, actions_BA, rewards_B, discount_B, next_obs_BD) -> list[float]:
        sac, B, A = self.sac, len(rewards_B), self.sac.action_dim
        alpha = (np.exp(self.log_alpha[0]) if sac.learn_alpha
                 else np.float32(sac.fixed_alpha[0]))
        critics, c_layers = sac.critics, sac.critics.layers
        # the actor at s and s' (its weights change only at the end of the step): one product
        a_hidden = self.bufs.hidden("actor", sac.actor_layers, 2 * B)
        out_NO = forward(sac.actor_layers, self.relu,
                         torch.from_numpy(np.concatenate([obs_BD, next_obs_BD])), a_hidden)
        out_NO = out_NO[0].numpy()
        raw_NA = out_NO[:, A:]
        std_NA = np.exp(np.clip(raw_NA, LOG_STD_MIN, LOG_STD_MAX))
        noise_NA = self._noise(B)
        a_NA, logp_N = squashed_gaussian_np(out_NO[:, :A], std_NA, noise_NA)
        logp_pi, a_pi = logp_N[:B], a_NA[:B]
        mean_logp = logp_pi.mean()
        alpha_loss = self._alpha_step(mean_logp)
        # target (2018b eq. 3): the soft value of s' under the target critics. The critics'
        # three forwards share one set of hidden buffers: each is done with before the next
        c_hidden = self.bufs.hidden("critic", c_layers, B)
        x_next = torch.from_numpy(np.concatenate([next_obs_BD, a_NA[B:]], -1))
        v_next_B = forward(critics.target_layers, self.relu, x_next, c_hidden)[..., 0].numpy()
        v_next_B = v_next_B.min(0)
        if sac.backup_entropy:
            v_next_B = v_next_B - alpha * logp_N[B:]
        y_B = rewards_B + discount_B * v_next_B
        # critics: d/dQ_j of 0.5 sum_j mean_b (Q_j - y)^2 is (Q_j - y) / B
        x_BI = torch.from_numpy(np.concatenate([obs_BD, actions_BA], -1))
        q_KB1 = forward(c_layers, self.relu, x_BI, c_hidden).numpy()
        err_KB1 = q_KB1 - y_B[:, None]
        backward(c_layers, self.relu, x_BI, c_hidden, torch.from_numpy(err_KB1 * (1 / B)),
                 self.critic_grads, self.bufs.hidden("critic_grad", c_layers, B))
        critics.opt.step()
        # actor (2018b eq. 9) against the critics just stepped: dQ/da of the min critic
        x_pi = torch.from_numpy(np.concatenate([obs_BD, a_pi], -1))
        q_pi_KB = forward(c_layers, self.relu, x_pi, c_hidden)[..., 0]
        q_pi_B, dq_da_BA = min_critic_action_grad(c_layers, self.relu, c_hidden, q_pi_KB,
                                                  sac.feature_dim, self.bufs)
        g_out_BO = actor_out_grad(alpha, a_pi, dq_da_BA.numpy(), noise_NA[:B], std_NA[:B],
                                  raw_NA[:B])
        backward(sac.actor_layers, self.relu, torch.from_numpy(obs_BD),
                 [h[:, :B] for h in a_hidden], torch.from_numpy(g_out_BO)[None],
                 self.actor_grads, self.bufs.hidden("actor_grad", sac.actor_layers, B))
        sac.actor_opt.step()
        critics.update_target()
        sac.grad_steps += 1
        return [0.5 * float((err_KB1 * err_KB1).mean(1).sum()),
                float((alpha * logp_pi - q_pi_B.numpy()).mean()), float(alpha), alpha_loss,
                -float(mean_logp), float(q_KB1.mean())]


def squashed_gaussian_np(mean_BA: np.ndarray, std_BA: np.ndarray,
                         noise_BA: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sac_math.squashed_gaussian in numpy, from the std: a = tanh(u) and log pi(a|s) [B]."""
    u_BA = mean_BA + noise_BA * std_BA
    log_det_BA = 2.0 * (LOG_2 - u_BA - np.logaddexp(0.0, -2.0 * u_BA))
    logp_B = (-0.5 * noise_BA * noise_BA - np.log(std_BA) - 0.5 * LOG_2PI
              - log_det_BA).sum(-1)
    return np.tanh(u_BA), logp_B


def actor_out_grad(alpha, a_BA, dq_da_BA, noise_BA, std_BA, raw_BA) -> np.ndarray:
    """d/d(actor output) of mean_b [alpha log pi(a_b|s_b) - a_b . dQ/da_b], [B, 2A].

    With u = mean + std noise and a = tanh(u): d log pi / du = 2 tanh(u) (from the
    -log(1 - tanh(u)^2) term), da/du = 1 - a^2, du/d log std = std noise, and log pi holds
    -log std itself; the clamp of the log-std passes the gradient inside its bounds only.
    """
    scale = np.float32(1.0 / len(a_BA))
    g_u = ((2 * alpha) * a_BA - dq_da_BA * (1 - a_BA * a_BA)) * scale
    g_log_std = (g_u * noise_BA * std_BA - alpha * scale) * (
        (raw_BA >= LOG_STD_MIN) & (raw_BA <= LOG_STD_MAX))
    return np.concatenate([g_u, g_log_std], -1)
