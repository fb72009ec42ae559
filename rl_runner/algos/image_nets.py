"""What bc, cql (Discrete) and gail share to learn from image observations on any device.

An image goes through the Nature CNN (rl_runner/encoders.py) and then the algorithm's own MLP
head; it stays uint8 until the CNN, which scales it. Checkpoints hold CPU tensors only, so that
a run trained on a GPU loads on a machine without one.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_runner.encoders import EncoderSpec, NatureCNN, make_cnn
from rl_runner.nets import ParallelMLP

# rows per forward pass where a whole split of images is scored at once (validation)
IMAGE_CHUNK = 1024


def encoder_spec(encoder: str, channels, kernels, strides, features: int) -> EncoderSpec:
    return EncoderSpec(encoder, tuple(channels), tuple(kernels), tuple(strides), int(features))


class EncodedMLP(nn.Module):
    """The CNN's features, then a ParallelMLP head: [K, B, out] as the head alone gives."""

    def __init__(self, cnn: NatureCNN, head: ParallelMLP):
        super().__init__()
        self.cnn, self.head = cnn, head

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.cnn(obs))


def make_net(space: gym.Space, spec: EncoderSpec, kind: str, hidden_sizes: list[int],
             out_dim: int, **head) -> nn.Module:
    """A ParallelMLP (k=1) over the flattened observation, or over CNN features for kind=cnn;
    `head`: ParallelMLP's activation and gains. The vector net is built first and alone, so
    that its initial weights are what they were before images came."""
    if kind != "cnn":
        return ParallelMLP(int(np.prod(space.shape)), list(hidden_sizes), out_dim, k=1, **head)
    cnn = make_cnn(space, spec)
    return EncodedMLP(cnn, ParallelMLP(cnn.out_dim, list(hidden_sizes), out_dim, k=1, **head))


def obs_tensor(obs: np.ndarray, image: bool, device: torch.device) -> torch.Tensor:
    """A batch of observations as the net takes them: images as they are (uint8, [B, ...]),
    vectors flattened to float32 [B, D]."""
    obs = np.asarray(obs)
    if image:
        return torch.from_numpy(np.ascontiguousarray(obs)).to(device)
    return torch.from_numpy(np.asarray(obs.reshape(len(obs), -1), np.float32)).to(device)


def to_cpu(state: Any) -> Any:
    """A state dict with every tensor on the CPU (a no-op for CPU tensors)."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


def row_chunks(n: int, image: bool) -> list[slice]:
    """Slices over n rows: one for vectors, IMAGE_CHUNK rows each for images."""
    size = IMAGE_CHUNK if image else max(n, 1)
    return [slice(i, i + size) for i in range(0, n, size)]


