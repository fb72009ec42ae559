"""Observation encoders: the seam between what an env returns and an algorithm's networks.

Vectors go straight into the algorithm's MLPs (flattened). Images (a Box of uint8 with three
dimensions, e.g. Atari's 4 stacked 84x84 grey frames) go through a convolutional encoder first:
the Nature CNN of Mnih et al. (2015) by default, its sizes set by the algo.cnn_* keys. Pixels are
stored as uint8 everywhere (rollouts, replay, datasets) and scaled to [0, 1] inside the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_runner.errors import UserError

EncoderKind = Literal["auto", "mlp", "cnn"]


def is_image(space: gym.Space) -> bool:
    """A Box of uint8 with three dimensions (channels first or last): an image observation."""
    return (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8
            and len(space.shape) == 3)


def chw_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of an image shape: channels last where the last dimension is
    1, 3 or 4 (grey, RGB, RGBA: 84x84x3) and the first is not, else channels first (stacks of
    frames, 4x84x84, also 20x16x16)."""
    a, h, b = shape
    return (b, a, h) if b in (1, 3, 4) and a not in (1, 3, 4) else (a, h, b)


@dataclass(frozen=True)
class EncoderSpec:
    """What algo.encoder and algo.cnn_* ask for (every image-capable algorithm takes them)."""

    kind: EncoderKind = "auto"
    channels: tuple[int, ...] = (32, 64, 64)
    kernels: tuple[int, ...] = (8, 4, 3)
    strides: tuple[int, ...] = (4, 2, 1)
    features: int = 512

    def resolve(self, space: gym.Space, who: str = "algo") -> str:
        """'mlp' or 'cnn' for this observation space; one line where they do not fit."""
        image = is_image(space)
        kind = ("cnn" if image else "mlp") if self.kind == "auto" else self.kind
        if kind == "cnn" and not image:
            raise UserError(f"{who}.encoder=cnn needs image observations (a uint8 Box of 3 "
                            f"dimensions); this env's are {space}; allowed here: auto, mlp")
        if not (len(self.channels) == len(self.kernels) == len(self.strides)):
            raise UserError(f"{who}.cnn_channels, cnn_kernels and cnn_strides must have one "
                            f"entry per layer; got {len(self.channels)}, {len(self.kernels)}, "
                            f"{len(self.strides)}")
        if kind == "cnn":
            _, h, w = chw_shape(space.shape)
            for k, s in zip(self.kernels, self.strides):
                h, w = (h - k) // s + 1, (w - k) // s + 1
                if h < 1 or w < 1:
                    raise UserError(f"{who}.cnn_kernels {list(self.kernels)} and cnn_strides "
                                    f"{list(self.strides)} shrink the {space.shape} image to "
                                    "nothing; use smaller kernels or strides")
        return kind


class NatureCNN(nn.Module):
    """Convolutions with ReLU, then a linear layer to `features` with ReLU (Mnih et al. 2015).

    Takes uint8 (or float) images [B, C, H, W] or [B, H, W, C] as the env gives them; scales
    them to [0, 1] here, so that buffers keep the uint8 frames.
    """

    def __init__(self, obs_shape: tuple[int, ...], channels=(32, 64, 64), kernels=(8, 4, 3),
                 strides=(4, 2, 1), features: int = 512):
        super().__init__()
        c, h, w = chw_shape(tuple(obs_shape))
        self.channels_last = tuple(obs_shape) != (c, h, w)
        layers: list[nn.Module] = []
        for out_c, k, s in zip(channels, kernels, strides):
            layers += [nn.Conv2d(c, out_c, k, s), nn.ReLU()]
            c, h, w = out_c, (h - k) // s + 1, (w - k) // s + 1
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.linear = nn.Linear(c * h * w, features)
        self.out_dim = features
        for m in self.modules():  # orthogonal init with ReLU gain, as CleanRL's and SB3's Atari
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(m.weight, math.sqrt(2))
                nn.init.zeros_(m.bias)
        # channels_last weights and activations: ~1.7x faster convolutions (forward and backward)
        # on the CPU than the default layout, and the layout cuDNN prefers as well
        self.convs.to(memory_format=torch.channels_last)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2) if self.channels_last else obs
        # a no-op where the caller already holds channels_last frames (ppo's rollouts)
        x = x.contiguous(memory_format=torch.channels_last)  # uint8 here: a quarter of the bytes
        if x.dtype == torch.uint8:  # to float32 in [0, 1]: the same bits as torch.div(x, 255.0),
            x = x.to(torch.float32).div_(255.0)  # 2x faster (mixed-dtype division is slow)
        # then to the weights' dtype: a no-op in float32 and under autocast (which casts the
        # float32 input itself); a bfloat16 copy of the net gets autocast's input bits
        x = x.to(self.linear.weight.dtype)
        return torch.relu(self.linear(self.convs(x)))


def make_cnn(space: gym.Space, spec: EncoderSpec) -> NatureCNN:
    return NatureCNN(space.shape, spec.channels, spec.kernels, spec.strides, spec.features)


def image_bytes(space: gym.Space) -> int:
    return int(np.prod(space.shape)) if is_image(space) else 0
