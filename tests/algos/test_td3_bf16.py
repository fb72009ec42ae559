"""algo.precision for td3 and ddpg: the hidden-to-hidden products of the update in bfloat16
(mlp_forward / mlp_backward with `lowp`), what auto picks, and that such runs learn, resume and
act in float32."""
from __future__ import annotations

import pytest
import torch

from rl_runner.algos.mlp_grad import mlp_backward
from rl_runner.algos.twin_critic import cached_layers, mlp_forward
from rl_runner.nets import ParallelMLP

BF16 = torch.bfloat16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def forward_backward(net: ParallelMLP, x: torch.Tensor, g: torch.Tensor, lowp,
                     backward_lowp="same"):
    """mlp_forward's output, mlp_backward's weight, bias and input gradients; the backward in
    `backward_lowp` where given (from the forward's hidden layers, as they are)."""
    layers, hidden = cached_layers(net), []
    grads = [(torch.empty_like(w), torch.empty_like(b)) for w, b in layers]
    with torch.no_grad():
        out = mlp_forward(layers, net.act, x, hidden, lowp)
        g_in = mlp_backward(layers, net.activation == "relu", x, hidden, g, grads=grads,
                            input_from=2, lowp=lowp if backward_lowp == "same" else backward_lowp)
    return [out, g_in, *[t for pair in grads for t in pair]]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bf16_products_agree_with_float32_to_bfloat16s_precision(activation):
    """The forward, and the backward through the same hidden layers, within bfloat16's rounding
    of float32's (8 bits of mantissa: relative errors of a few 1e-3), and not float32's bits:
    the products did run in bfloat16. (Through a bf16 forward's own hidden layers ReLU's
    gradients differ by more, ~5e-2: units near 0 switch on or off.)"""
    torch.manual_seed(0)
    net = ParallelMLP(6, [64, 48, 32], 1, k=2, activation=activation)
    x, g = torch.randn(128, 6), torch.randn(2, 128, 1)
    want = forward_backward(net, x, g, None)
    out = forward_backward(net, x, g, BF16)[0]
    assert out.dtype == torch.float32 and 0 < rel_err(out, want[0]) < 1e-2
    got = forward_backward(net, x, g, None, backward_lowp=BF16)
    for i, (a, b) in enumerate(zip(got[1:-3], want[1:-3])):  # input, hidden layers' gradients
        assert a.dtype == torch.float32 and 0 < rel_err(a, b) < 1e-2, i
    # the last hidden layer's bias gradient (a sum of float32 g) and the output layer's (float32
    # products): float32's bits
    for a, b in zip(got[-3:], want[-3:]):
        assert torch.equal(a, b)


def test_an_mlp_without_hidden_to_hidden_products_keeps_float32s_bits():
    """The first layer (observations in) and the output layer stay float32: with one hidden
    layer, bf16 changes nothing."""
    torch.manual_seed(0)
    net = ParallelMLP(6, [64], 1, k=2, activation="relu")
    x, g = torch.randn(128, 6), torch.randn(2, 128, 1)
    for got, want in zip(forward_backward(net, x, g, BF16), forward_backward(net, x, g, None)):
        assert torch.equal(got, want)
