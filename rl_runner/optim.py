"""Adam and RMSprop over one flat buffer, for networks small enough that per-call overhead is the
cost."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn


class FlatParams:
    """Parameters and gradients as views into two flat tensors (`flat`, `grad`), and the
    gradient-norm clip: what FlatAdam and FlatRMSprop share."""

    def _flatten(self, params: Iterable[torch.nn.Parameter]) -> int:
        """Move the parameters into `flat` and their gradients into `grad`; their count."""
        self.params = list(params)
        n = sum(p.numel() for p in self.params)
        # the parameters' device (all on one): the steps run on CPU and CUDA alike
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.flat = torch.zeros(n, device=self.device)
        self.grad = torch.zeros(n, device=self.device)
        offset = 0
        for p in self.params:
            view = flat_view(self.flat, p, offset)
            view.copy_(p.detach())
            p.data, p.grad = view, flat_view(self.grad, p, offset)
            offset += p.numel()
        self._grad_np = self.grad.numpy() if self.device.type == "cpu" else None
        return n

    def zero_grad(self) -> None:
        self.grad.zero_()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradient to norm `max_norm` where it is longer; returns the norm before."""
        g = self._grad_np
        if g is None:  # on a GPU: no host sync beyond the norm itself
            norm = float(torch.linalg.vector_norm(self.grad))
            coef = max_norm / (norm + 1e-6)
            if coef < 1.0:
                self.grad.mul_(coef)
            return norm
        norm = math.sqrt(float(np.dot(g, g)))
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            np.multiply(g, coef, out=g)
        return norm


class FlatAdam(FlatParams):
    """Adam (Kingma & Ba 2015, Algorithm 1) with gradient-norm clipping, on a flat buffer.

    Every parameter and its gradient become views into two flat tensors, so one step is one
    call of torch's fused Adam kernel (the one behind `torch.optim.Adam(fused=True)`): ~19 us
    for 9k parameters here, against ~98 us for the six elementwise ops it replaces and ~0.15 ms
    for torch.optim's per-call Python work. The norm for clipping is one numpy dot product (~3 us
    against ~50 us for torch's scalar-tensor ops). Same update as torch.optim.Adam and
    torch.nn.utils.clip_grad_norm_. Gradients accumulate in place: never set them to None.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        n = self._flatten(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = torch.zeros(n, device=self.device)
        self.exp_avg_sq = torch.zeros(n, device=self.device)
        self.steps = 0
        # the fused kernel reads the step count from a tensor on the parameters' device
        self._step_t = torch.zeros((), device=self.device)

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        self._step_t.fill_(self.steps)
        beta1, beta2 = self.betas
        torch._fused_adam_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [],
                           [self._step_t], lr=self.lr, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone(),
                "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:  # copy_ moves CPU-loaded state to the device
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps, self.lr = state["steps"], state["lr"]


class FlatRMSprop(FlatParams):
    """RMSprop (Tieleman & Hinton 2012) on a flat buffer, as torch.optim.RMSprop takes it
    without momentum or centering (SB3's A2C: alpha 0.99, eps 1e-5), with the same clip.

    `tf_like`: TensorFlow's form, which SB3's RMSpropTFLike copies for the RL Zoo's Atari A2C:
    the squared-gradient average starts at 1 instead of 0 (no huge first steps) and eps goes
    under the square root.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, alpha: float = 0.99,
                 eps: float = 1e-8, tf_like: bool = False):
        n = self._flatten(params)
        self.lr, self.alpha, self.eps, self.tf_like = lr, alpha, eps, tf_like
        self.square_avg = (torch.ones if tf_like else torch.zeros)(n, device=self.device)
        self._avg = torch.empty(n, device=self.device)  # the step's denominator, reused
        self.steps = 0

    def step(self) -> None:
        """v = alpha v + (1 - alpha) g^2;  p -= lr g / (sqrt(v) + eps), or / sqrt(v + eps).
        No torch.no_grad (~8 us a step): the flat buffers are plain tensors, outside autograd."""
        self.steps += 1
        self.square_avg.mul_(self.alpha).addcmul_(self.grad, self.grad, value=1 - self.alpha)
        if self.tf_like:
            torch.add(self.square_avg, self.eps, out=self._avg).sqrt_()
        else:
            torch.sqrt(self.square_avg, out=self._avg).add_(self.eps)
        self.flat.addcdiv_(self.grad, self._avg, value=-self.lr)

    def state_dict(self) -> dict:
        return {"square_avg": self.square_avg.clone(), "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:  # copy_ moves CPU-loaded state to the device
        self.square_avg.copy_(state["square_avg"])
        self.steps, self.lr = state["steps"], state["lr"]


def flat_view(flat: torch.Tensor, p: torch.Tensor, offset: int) -> torch.Tensor:
    """A view of flat[offset:offset + p.numel()] with p's shape and p's memory layout (strides):
    a CNN's channels_last weights stay channels_last, which makes its convolutions ~1.7x faster
    on the CPU (measured: Nature CNN, batch 256, forward and backward, one thread)."""
    if p.is_contiguous():
        return flat[offset:offset + p.numel()].view_as(p)
    return torch.as_strided(flat, p.shape, p.stride(), offset)


def share_flat(module: nn.Module, flat: torch.Tensor) -> None:
    """Point the module's parameters into `flat`, in `parameters()` order, with FlatAdam's
    layout (the parameters' own strides: a deep copy of FlatAdam's network fits its flat)."""
    offset = 0
    for p in module.parameters():
        p.data = flat_view(flat, p, offset)
        offset += p.numel()
