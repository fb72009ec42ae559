import copy

import pytest
import torch

from rl_runner.optim import FlatAdam


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def test_flat_adam_matches_torch_adam_with_clipping():
    ref, flat_net = _net(), _net()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5)
    opt = FlatAdam(flat_net.parameters(), lr=1e-2, eps=1e-5)
    x, y = torch.randn(32, 5), torch.randn(32, 3)
    for _ in range(20):
        ref_opt.zero_grad()
        (ref(x) - y).pow(2).mean().mul(50).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        opt.zero_grad()
        (flat_net(x) - y).pow(2).mean().mul(50).backward()
        opt.clip_grad_norm(0.5)
        opt.step()
    for a, b in zip(ref.parameters(), flat_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the gradients really accumulate into the flat buffer
    assert opt.grad.abs().sum() > 0


def test_flat_adam_state_round_trip():
    net = _net()
    opt = FlatAdam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 5)).sum().backward()
    opt.step()
    net2 = copy.deepcopy(net)
    opt2 = FlatAdam(net2.parameters(), lr=5e-1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.steps == 1 and opt2.lr == 1e-3
    torch.testing.assert_close(opt2.exp_avg, opt.exp_avg)


def test_clip_grad_norm_scales_only_long_gradients_and_returns_the_norm_before():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = FlatAdam([p], lr=1e-3)
    opt.grad.copy_(torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert abs(opt.clip_grad_norm(1.0) - 5.0) < 1e-6
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]))
    assert abs(opt.clip_grad_norm(2.0) - 1.0) < 1e-6  # already short: unchanged
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]))


def test_flat_buffers_keep_a_cnns_channels_last_layout_and_targets_match():
    """FlatAdam's flat views keep each parameter's strides (the CNN's channels_last weights run
    ~1.7x faster on the CPU), and a target network shared into a copy of the flat buffer (the
    Polyak targets) reads the same values as the online network."""
    from rl_runner.encoders import NatureCNN
    from rl_runner.optim import share_flat

    torch.manual_seed(0)
    net = NatureCNN((4, 36, 36), channels=(8, 8), kernels=(4, 3), strides=(2, 1), features=16)
    before = copy.deepcopy(net)
    opt = FlatAdam(net.parameters(), lr=1e-3)
    w = net.convs[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert w.grad.is_contiguous(memory_format=torch.channels_last)
    x = torch.randint(0, 255, (5, 4, 36, 36), dtype=torch.uint8)
    assert torch.equal(net(x), before(x))  # the values moved into the flat buffer unchanged
    net(x).square().mean().backward()
    opt.step()
    target = copy.deepcopy(net)
    share_flat(target, opt.flat.clone())
    assert torch.equal(target(x), net(x))


def _rmsprop_pair(tf_like: bool):
    from rl_runner.optim import FlatRMSprop

    kind = torch.optim.RMSprop
    if tf_like:  # SB3 is the bench extra, not the test extra
        kind = pytest.importorskip(
            "stable_baselines3.common.sb2_compat.rmsprop_tf_like").RMSpropTFLike
    ref, flat_net = _net(), _net()
    ref_opt = kind(ref.parameters(), lr=1e-2, alpha=0.99, eps=1e-5)
    opt = FlatRMSprop(flat_net.parameters(), lr=1e-2, alpha=0.99, eps=1e-5, tf_like=tf_like)
    return ref, ref_opt, flat_net, opt


@pytest.mark.parametrize("tf_like", [False, True])
def test_flat_rmsprop_matches_torch_rmsprop_with_clipping(tf_like):
    """As SB3's A2C steps: torch.optim.RMSprop(alpha=0.99, eps=1e-5) after clip_grad_norm_, or
    SB3's RMSpropTFLike (the RL Zoo's Atari A2C)."""
    ref, ref_opt, flat_net, opt = _rmsprop_pair(tf_like)
    x, y = torch.randn(32, 5), torch.randn(32, 3)
    for step in range(20):
        scale = 50 if step % 2 else 0.01  # clipped steps and unclipped ones
        ref_opt.zero_grad()
        (ref(x) - y).pow(2).mean().mul(scale).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        ref_opt.step()
        opt.zero_grad()
        (flat_net(x) - y).pow(2).mean().mul(scale).backward()
        opt.clip_grad_norm(0.5)
        opt.step()
        for a, b in zip(ref.parameters(), flat_net.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    square_avg = torch.cat([ref_opt.state[p]["square_avg"].reshape(-1) for p in ref.parameters()])
    torch.testing.assert_close(opt.square_avg, square_avg)
    assert opt.steps == 20


def test_flat_rmsprop_state_round_trip_is_plain_and_exact():
    from rl_runner.optim import FlatRMSprop

    net = _net()
    opt = FlatRMSprop(net.parameters(), lr=1e-3, eps=1e-5)
    x = torch.randn(4, 5)
    net(x).sum().backward()
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"square_avg", "steps", "lr"} and isinstance(state["square_avg"],
                                                                         torch.Tensor)
    net2 = copy.deepcopy(net)
    opt2 = FlatRMSprop(net2.parameters(), lr=5e-1, eps=1e-5)
    opt2.load_state_dict(state)
    assert opt2.steps == 1 and opt2.lr == 1e-3
    for o, n in ((opt, net), (opt2, net2)):  # the same next step from the same state
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    torch.testing.assert_close(opt2.flat, opt.flat, rtol=0, atol=0)
