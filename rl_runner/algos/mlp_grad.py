"""Backpropagation by hand through a ParallelMLP's cached layers, for the off-policy learners
whose losses are simple enough to differentiate on paper (td3 and ddpg's critics and actor, dqn's
Q-network): no autograd graph, and the gradients land straight in FlatAdam's flat gradient
views, so there is nothing to zero or accumulate. FlushDenormals keeps Adam's decaying moments
of dead ReLU units off float32's slow denormal path while such an update runs."""
from __future__ import annotations

import torch

from rl_runner.algos.twin_critic import NARROW, lowp_bmm


class FlushDenormals:
    """Within the block, float results below float32's smallest normal (~1.2e-38) are zero on
    this thread (x86: FTZ and DAZ; elsewhere a no-op). Adam's first moment of a weight whose
    gradient is exactly 0 (a dead ReLU unit) decays by beta1 each step into that range, where
    each operation costs many cycles: in updates 1500-2000 of td3's pendulum preset the median
    update took 13.2 and 14.7 ms with them, 9.0 and 9.3 ms flushed (one thread, two runs each,
    alternating; Intel Xeon, 2 cores shared with other work). The previous mode is restored on
    exit, so code outside the block computes as before."""

    # a denormal (2^-127), made from its bits: reads as 0 while denormals are flushed
    _probe = torch.tensor([1 << 22], dtype=torch.int32).view(torch.float32)

    def __enter__(self):
        self.was_on = bool(self._probe.mul(1.0)[0] == 0)
        if not self.was_on:
            torch.set_flush_denormal(True)

    def __exit__(self, *exc) -> None:
        if not self.was_on:
            torch.set_flush_denormal(False)


def mlp_backward(layers: list, relu: bool, x_BI: torch.Tensor, hidden: list,
                 g_KBO: torch.Tensor, grads: list | None = None,
                 input_from: int | None = None,
                 lowp: torch.dtype | None = None) -> torch.Tensor | None:
    """Backpropagate dLoss/d(output) [K, B, O] through the MLP of `layers` (cached (weight,
    bias) pairs of a ParallelMLP) whose mlp_forward on x [B, I] filled `hidden`. Writes the
    weight and bias gradients into `grads` ((weight, bias) gradient views) where given; returns
    dLoss/dx[:, input_from:] [K, B, I - input_from] where input_from is given. `lowp`: the
    hidden-to-hidden layers' products in that dtype, as mlp_forward's (gradients float32)."""
    g = g_KBO
    last = len(layers) - 1
    for i in range(last, -1, -1):
        w = layers[i][0]
        h_in = hidden[i - 1] if i else x_BI.unsqueeze(0).expand(w.shape[0], *x_BI.shape)
        if lowp is not None and 0 < i < last:
            g = _lowp_layer(w, h_in, g, None if grads is None else grads[i], relu, lowp)
            continue
        if grads is not None:
            gw, gb = grads[i]
            if g.shape[-1] <= NARROW:  # dw^T = g^T h, the layout NarrowOutput takes
                torch.bmm(g.transpose(1, 2), h_in, out=gw.transpose(1, 2))
            else:
                torch.bmm(h_in.transpose(1, 2), g, out=gw)
            torch.sum(g, 1, keepdim=True, out=gb)
        if i == 0:
            if input_from is None:
                return None
            w = w[:, input_from:]
        # one output column: an outer product, as a broadcast multiply
        g = g * w.transpose(1, 2) if g.shape[-1] == 1 else torch.bmm(g, w.transpose(1, 2))
        if i:  # through the activation, from its output
            g = through_activation(g, h_in, relu)
    return g


def _lowp_layer(w: torch.Tensor, h_in: torch.Tensor, g: torch.Tensor, grads: tuple | None,
                relu: bool, lowp: torch.dtype) -> torch.Tensor:
    """mlp_backward's step through a hidden-to-hidden layer whose products run in `lowp`: its
    weight gradient h^T g and the gradient at its input g w^T through the activation below."""
    g_lp = g.to(lowp)
    if grads is not None:
        gw, gb = grads
        gw.copy_(lowp_bmm(h_in.transpose(1, 2), g_lp, lowp))
        torch.sum(g, 1, keepdim=True, out=gb)
    return through_activation(lowp_bmm(g_lp, w.transpose(1, 2), lowp).float(), h_in, relu)


def through_activation(g: torch.Tensor, h: torch.Tensor, relu: bool) -> torch.Tensor:
    """g times the activation's derivative, from its output h; in place (g is a fresh
    product wherever it is called)."""
    if relu:
        return torch.ops.aten.threshold_backward.grad_input(g, h, 0, grad_input=g)
    return torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)
