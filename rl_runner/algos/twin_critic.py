"""Twin Q critics with a Polyak-averaged target, and the batched MLP forward they run on.

TwinCritic is the critic half of an actor-critic off-policy learner (SAC; TD3 and DDPG have the
same one): K Q-networks in one ParallelMLP, their Adam step on one flat buffer, and a target copy
averaged towards them. The learner owns its loss; this class owns the networks and the step.
CriticEncoder is the image encoder (a CNN) in front of them, trained by their loss.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam, share_flat


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


def lowp_bmm(a: torch.Tensor, b: torch.Tensor, lowp: torch.dtype) -> torch.Tensor:
    """a @ b with both operands cast to `lowp` (bfloat16): torch's oneDNN kernels on a CPU with
    bfloat16 units multiply in bfloat16 and accumulate in float32; the product comes back in
    `lowp`, for its consumer to widen as it reads it."""
    return torch.bmm(a.to(lowp), b.to(lowp))


IN_PLACE = {torch.relu: torch.relu_, torch.tanh: torch.tanh_}


def mlp_forward(layers: list, act, x_BI: torch.Tensor, hidden: list | None = None,
                lowp: torch.dtype | None = None) -> torch.Tensor:
    """ParallelMLP.forward over cached (weight, bias) pairs; output [K, B, out].
    `hidden`, when given, receives each hidden layer's output [K, B, H]. `lowp` (torch.bfloat16;
    without autograd): the hidden-to-hidden products take their operands in that dtype, as
    lowp_bmm does; the rest stays float32."""
    w, _ = layers[0]
    h = x_BI.unsqueeze(0).expand(w.shape[0], *x_BI.shape)
    if not torch.is_grad_enabled():  # the activation in place: one allocation less a layer
        act = IN_PLACE.get(act, act)
    for i, (w, b) in enumerate(layers[:-1]):
        if i and lowp is not None:  # the bias added in the same pass that makes float32
            h = act(torch.add(b, lowp_bmm(h, w, lowp)))
        else:
            h = act(torch.baddbmm(b, h, w))
        if hidden is not None:
            hidden.append(h)
    w, b = layers[-1]
    if w.shape[-1] > NARROW:
        return torch.baddbmm(b, h, w)
    return NarrowOutput.apply(h, w, b) if torch.is_grad_enabled() else narrow_output(h, w, b)


def cached_layers(net: ParallelMLP) -> list:
    """(weight, bias) pairs: indexing a ParameterList in the hot loop costs ~5 us a time."""
    return list(zip(net.weights, net.biases))


class PolyakTarget:
    """A frozen copy of a FlatAdam-trained network whose parameters are one flat tensor, so that
    Polyak averaging towards the online network is a single lerp_."""

    def __init__(self, net: nn.Module, opt: FlatAdam, tau: float):
        self.net = copy.deepcopy(net).requires_grad_(False)
        self.flat = opt.flat.clone()
        share_flat(self.net, self.flat)
        self.online_flat, self.tau = opt.flat, tau

    def update(self) -> None:
        self.flat.lerp_(self.online_flat, self.tau)  # theta-bar <- tau theta + (1-tau) theta-bar


class TwinCritic:
    """K Q-networks (2: twin critics) evaluated by one chain of batched matmuls, [K, B, out],
    with their Adam on one flat buffer and a Polyak-averaged target."""

    def __init__(self, in_dim: int, hidden_sizes: list[int], out_dim: int, *, activation: str,
                 lr: float, tau: float, k: int = 2, device: torch.device | None = None,
                 init: str = "orthogonal"):
        self.net = ParallelMLP(in_dim, list(hidden_sizes), out_dim, k=k, activation=activation,
                               out_gains=(1.0,) * k, init=init)
        if device is not None:  # initialised on the CPU: the same weights on every device
            self.net.to(device)
        self.opt = FlatAdam(self.net.parameters(), lr=lr)
        self.target = PolyakTarget(self.net, self.opt, tau)
        self.layers, self.target_layers = cached_layers(self.net), cached_layers(self.target.net)

    def q(self, x_BI: torch.Tensor, hidden: list | None = None) -> torch.Tensor:
        """Every critic's output [K, B, out]; `hidden` as in mlp_forward."""
        return mlp_forward(self.layers, self.net.act, x_BI, hidden)

    def target_q(self, x_BI: torch.Tensor, lowp: torch.dtype | None = None) -> torch.Tensor:
        return mlp_forward(self.target_layers, self.net.act, x_BI, lowp=lowp)

    def step(self, loss: torch.Tensor) -> None:
        """One Adam step of the critics on `loss`; the target follows in update_target."""
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def update_target(self) -> None:
        self.target.update()

    def state_dict(self) -> dict:
        return {"critic": self.net.state_dict(), "critic_target": self.target.flat.clone(),
                "critic_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["critic"])  # in place: parameters stay views into opt.flat
        with torch.no_grad():
            self.target.flat.copy_(state["critic_target"])
        self.opt.load_state_dict(state["critic_opt"])


class CriticEncoder:
    """An observation encoder (a CNN) that the critics own, as in DrQ and SAC-AE: trained by the
    critics' loss with its own Adam, copied into a Polyak-averaged target that feeds the target
    critics. The actor reads its features detached, so no actor gradient reaches it."""

    def __init__(self, net: nn.Module, *, lr: float, tau: float):
        self.net = net
        self.opt = FlatAdam(net.parameters(), lr=lr)
        self.target = PolyakTarget(net, self.opt, tau)

    def state_dict(self) -> dict:
        return {"encoder": self.net.state_dict(), "encoder_target": self.target.flat.clone(),
                "encoder_opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["encoder"])  # in place, as TwinCritic's
        with torch.no_grad():
            self.target.flat.copy_(state["encoder_target"])
        self.opt.load_state_dict(state["encoder_opt"])
