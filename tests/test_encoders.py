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
