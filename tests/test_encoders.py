"""The encoder seam: which axis of an image is its channels."""
from __future__ import annotations

import pytest

from rl_runner.encoders import chw_shape


@pytest.mark.parametrize("shape, chw", [
    ((4, 84, 84), (4, 84, 84)),     # Atari: 4 stacked grey frames, channels first
    ((84, 84, 3), (3, 84, 84)),     # an RGB screen, channels last
    ((84, 84, 4), (4, 84, 84)),     # RGBA
    ((20, 16, 16), (20, 16, 16)),   # more stacked frames than pixels across: still a stack
    ((12, 10, 10), (12, 10, 10)),   # 4 colour frames stacked, small screens
    ((3, 64, 64), (3, 64, 64)),
])
def test_channels_are_found_where_images_keep_them(shape, chw):
    assert chw_shape(shape) == chw


@pytest.mark.parametrize("shape", [(4, 20, 20), (20, 20, 3)])
def test_the_cnn_sees_pixels_scaled_to_one_in_either_layout(shape):
    """uint8 frames, channels first or last, give what float frames / 255 in channels-first
    layout give, to the bit."""
    import torch

    from rl_runner.encoders import NatureCNN

    torch.manual_seed(0)
    cnn = NatureCNN(shape, channels=(8,), kernels=(4,), strides=(2,), features=16)
    frames = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    floats = frames.float() / 255.0
    if shape[-1] == 3:
        floats = floats.permute(0, 3, 1, 2)
    want = torch.relu(cnn.linear(cnn.convs(floats.contiguous(memory_format=torch.channels_last))))
    assert torch.equal(cnn(frames), want)
    assert float(cnn(torch.full((1, *shape), 255, dtype=torch.uint8)).sum()) == \
        float(cnn(torch.ones(1, *shape)).sum())


def test_bf16_acting_copy_gives_autocasts_bits_and_follows_the_weights():
    """CnnActorCritic.infer runs a bfloat16 copy of the net: the same outputs as the autocast
    forward, remade when the version tag moves (and only then: the tag is the contract)."""
    import gymnasium as gym
    import numpy as np
    import torch

    from rl_runner.encoders import EncoderSpec
    from rl_runner.nets import CnnActorCritic

    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, 36, 36), np.uint8)
    spec = EncoderSpec("cnn", (8, 16), (8, 4), (4, 2), 32)
    net = CnnActorCritic(space, gym.spaces.Discrete(4), spec, precision="bf16")
    frames = torch.randint(0, 256, (6, 4, 36, 36), dtype=torch.uint8)
    with torch.inference_mode():
        for version in (0, 1):
            want = net(frames)
            got = net.infer(frames, version)
            assert all(torch.equal(g, w) for g, w in zip(got, want))
            with torch.inference_mode(False), torch.no_grad():
                net.encoder.linear.weight.mul_(1.5)  # what an optimizer step does
        stale = net.infer(frames, 1)  # the tag did not move: the copy is kept
        assert torch.equal(stale[0], got[0]) and not torch.equal(stale[0], net(frames)[0])
        assert torch.equal(net.infer(frames, 2)[0], net(frames)[0])
    assert all(k.startswith(("encoder", "actor", "critic")) for k in net.state_dict())
