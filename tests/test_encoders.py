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
