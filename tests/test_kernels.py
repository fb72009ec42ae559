"""MLPKernel against the torch ParallelMLP it shares parameters with: outputs and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_runner import kernels
from rl_runner.kernels import _SIGMOID_TANH_MIN, MLPKernel, _tanh_
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam


def build(activation: str, hidden=(16, 8)):
    torch.manual_seed(0)
    mlp = ParallelMLP(5, list(hidden), 3, k=2, activation=activation)
    opt = FlatAdam(mlp.parameters(), lr=1e-2)
    return mlp, opt, MLPKernel(mlp)


# 300 rows put the hidden layers above the size where tanh goes through torch's sigmoid;
# with [64, 48] hidden the hidden-to-hidden matmuls go through torch.bmm
@pytest.mark.parametrize("rows,hidden", [(11, (16, 8)), (300, (16, 8)), (300, (64, 48))])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_forward_and_backward_match_torch(activation, rows, hidden):
    mlp, _, kernel = build(activation, hidden)
    r = np.random.default_rng(0)
    x = r.normal(size=(rows, 5)).astype(np.float32)
    g = r.normal(size=(2, rows, 3)).astype(np.float32)
    out = kernel.forward(x)
    grad_ws = [np.zeros(w.shape, np.float32) for w in mlp.weights]
    grad_bs = [np.zeros(b.shape, np.float32) for b in mlp.biases]
    kernel.backward(g, grad_ws, grad_bs)

    ref = mlp(torch.from_numpy(x))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    mlp.zero_grad()
    (ref * torch.from_numpy(g)).sum().backward()
    for mine, p in zip(grad_ws + grad_bs, list(mlp.weights) + list(mlp.biases)):
        # float32 sums over `rows` terms of size ~1: rounding grows with the row count
        np.testing.assert_allclose(mine, p.grad.numpy(), rtol=1e-4, atol=1e-6 * rows)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_jvp_matches_torch_forward_mode(activation):
    """The output's directional derivative along a parameter direction, as torch.func.jvp gives
    it for the same MLP written out in float64 torch ops."""
    mlp, _, kernel = build(activation, (64, 48))
    r = np.random.default_rng(2)
    x = r.normal(size=(300, 5)).astype(np.float32)
    d_ws = [r.normal(size=w.shape).astype(np.float32) for w in mlp.weights]
    d_bs = [r.normal(size=b.shape).astype(np.float32) for b in mlp.biases]
    kernel.forward(x)
    mine = kernel.jvp(d_ws, d_bs).copy()

    act = torch.tanh if activation == "tanh" else torch.relu
    n = len(d_ws)

    def out(*params):
        h = torch.from_numpy(x).double()
        for i, (w, b) in enumerate(zip(params[:n], params[n:])):
            h = h @ w + b  # [B, I] @ [K, I, O] broadcasts to [K, B, O]
            h = act(h) if i < n - 1 else h
        return h

    primals = tuple(t.detach().double() for t in [*mlp.weights, *mlp.biases])
    tangents = tuple(torch.from_numpy(d).double() for d in d_ws + d_bs)
    _, ref = torch.func.jvp(out, primals, tangents)
    np.testing.assert_allclose(mine, ref.numpy(), rtol=1e-4, atol=1e-4)
    assert np.abs(mine).max() > 1.0  # not trivially zero


@pytest.mark.parametrize("numpy_only", [False, True])
def test_tanh_in_place_matches_numpy_on_both_paths(monkeypatch, numpy_only):
    monkeypatch.setattr(kernels, "_NUMPY_TANH_ONLY", numpy_only)
    r = np.random.default_rng(0)
    for size in (100, 3 * _SIGMOID_TANH_MIN):
        x = (r.normal(size=size) * 4).astype(np.float32)
        x[:4] = [0.0, 30.0, -30.0, 1e-6]  # saturation and tiny inputs
        a = x.copy()
        _tanh_(a)
        np.testing.assert_allclose(a, np.tanh(x), rtol=0, atol=3e-7)


@pytest.mark.parametrize("target, numpy_only", [("X86_V4", True), ("AVX512_SKX", True),
                                                ("X86_V3", False), ("baseline", False)])
def test_numpy_tanh_serves_every_size_where_numpy_runs_it_with_avx512(monkeypatch, target,
                                                                      numpy_only):
    from numpy.lib import introspect

    monkeypatch.setattr(introspect, "opt_func_info",
                        lambda **_: {"tanh": {"ff": {"current": target}}})
    assert kernels._numpy_tanh_is_avx512() is numpy_only


def test_numpy_tanh_rule_reads_this_numpy():
    # the real report, not a stub: a numpy whose report changed shape would fall back silently
    from numpy.lib.introspect import opt_func_info

    assert opt_func_info(func_name="^tanh$", signature="float32")["tanh"]["ff"]["current"]


def test_a_members_slice_evaluates_that_network_alone():
    mlp, _, full = build("tanh")
    critic = MLPKernel(mlp, members=slice(1, 2))
    r = np.random.default_rng(1)
    x = r.normal(size=(7, 5)).astype(np.float32)
    g = r.normal(size=(2, 7, 3)).astype(np.float32)
    g[0] = 0.0  # the full kernel's actor row gets no gradient, so its row 1 is the critic's
    out_full = full.forward(x).copy()
    full_ws = [np.zeros(w.shape, np.float32) for w in mlp.weights]
    full_bs = [np.zeros(b.shape, np.float32) for b in mlp.biases]
    full.backward(g, full_ws, full_bs)
    out = critic.forward(x)
    assert out.shape == (1, 7, 3)
    np.testing.assert_array_equal(out[0], out_full[1])
    ws = [np.zeros((1, *w.shape[1:]), np.float32) for w in mlp.weights]
    bs = [np.zeros((1, *b.shape[1:]), np.float32) for b in mlp.biases]
    critic.backward(g[1:2], ws, bs)
    for mine, ref in zip(ws + bs, full_ws + full_bs):
        np.testing.assert_allclose(mine[0], ref[1], rtol=1e-6, atol=1e-7)


def test_kernel_sees_optimizer_steps_and_load_state_dict():
    mlp, opt, kernel = build("tanh")
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    before = kernel.forward(x).copy()
    opt.grad.normal_()
    opt.step()
    after_step = kernel.forward(x).copy()
    assert not np.allclose(before, after_step)
    np.testing.assert_allclose(after_step, mlp(torch.from_numpy(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    other = ParallelMLP(5, [16, 8], 3, k=2)
    mlp.load_state_dict(other.state_dict())
    np.testing.assert_allclose(kernel.forward(x), other(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_outputs_of_different_batch_sizes_do_not_overwrite_each_other():
    _, _, kernel = build("tanh")
    r = np.random.default_rng(2)
    a, b = r.normal(size=(3, 5)).astype(np.float32), r.normal(size=(6, 5)).astype(np.float32)
    out_a = kernel.forward(a)
    copy_a = out_a.copy()
    kernel.forward(b)
    np.testing.assert_array_equal(out_a, copy_a)
