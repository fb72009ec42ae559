"""TwinCritic: the cached-layer forward against ParallelMLP's, Polyak averaging, state."""
from __future__ import annotations

import pytest
import torch

from rl_runner.algos.twin_critic import TwinCritic, cached_layers, mlp_forward
from rl_runner.nets import ParallelMLP


@pytest.mark.parametrize("out_dim", [1, 3, 9], ids=["one-column", "narrow", "wide"])
def test_mlp_forward_matches_parallel_mlp_values_and_gradients(out_dim):
    """Outputs up to NARROW columns go through NarrowOutput's own backward; wider ones do not."""
    torch.manual_seed(0)
    net = ParallelMLP(5, [16, 8], out_dim, k=2, activation="tanh")
    x = torch.randn(7, 5, requires_grad=True)
    g = torch.randn(2, 7, out_dim)
    expected = net(x)
    grads = torch.autograd.grad((expected * g).sum(), [x, *net.parameters()])
    got = mlp_forward(cached_layers(net), net.act, x)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad((got * g).sum(), [x, *net.parameters()]), grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(mlp_forward(cached_layers(net), net.act, x), expected)


def make_critics(tau: float = 0.1) -> TwinCritic:
    torch.manual_seed(0)
    return TwinCritic(4, [16, 16], 1, activation="relu", lr=1e-2, tau=tau)


def test_a_step_moves_the_critics_and_the_target_follows_by_polyak_averaging():
    critics = make_critics(tau=0.1)
    target, online = critics.target.flat, critics.opt.flat
    torch.testing.assert_close(target, online)
    x = torch.randn(32, 4)
    torch.testing.assert_close(critics.target_q(x), critics.q(x).detach())
    before, online_before = target.clone(), online.clone()
    critics.step(critics.q(x).pow(2).mean())
    assert not torch.equal(online, online_before) and torch.equal(target, before)
    critics.update_target()
    torch.testing.assert_close(target, 0.9 * before + 0.1 * online)
    # the target network computes with the averaged parameters: they are views of its flat tensor
    torch.testing.assert_close(critics.target_q(x), critics.target.net(x))
    assert not critics.target.flat.requires_grad


def test_state_round_trip_keeps_parameters_views_of_the_flat_buffers():
    a, b = make_critics(), make_critics()
    x = torch.randn(32, 4)
    for _ in range(3):
        a.step(a.q(x).pow(2).mean())
        a.update_target()
    b.load_state_dict(a.state_dict())
    a.step(a.q(x).pow(2).mean())
    b.step(b.q(x).pow(2).mean())  # same Adam moments: the same step
    assert torch.equal(a.opt.flat, b.opt.flat) and torch.equal(a.target.flat, b.target.flat)
    assert b.net.weights[0].data_ptr() == b.opt.flat.data_ptr()
    assert b.target.net.weights[0].data_ptr() == b.target.flat.data_ptr()
