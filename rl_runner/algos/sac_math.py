"""SAC's shared pieces: the squashed Gaussian and its log-density, the log-std bounds, the
metrics an update reports (sac.py's steps and sac_compiled.py's), and acting in numpy."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from rl_runner.nets import LOG_2PI

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # as SB3: keeps exp(log_std) finite early in training
LOG_2 = math.log(2.0)
METRICS = ("qf_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "qf_values")


def squashed_gaussian(mean_BA: torch.Tensor, log_std_BA: torch.Tensor,
                      noise_BA: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(mean + std * noise) and its exact log-density.

    Change of variables (Haarnoja et al. 2018a, appendix C, eq. 21):
    log pi(a|s) = log N(u; mean, std) - sum_i log(1 - tanh(u_i)^2), and
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) holds exactly without the usual +1e-6.
    """
    u_BA = mean_BA + noise_BA * log_std_BA.exp()
    log_det_BA = 2.0 * (LOG_2 - u_BA - F.softplus(-2.0 * u_BA))
    logp_B = (-0.5 * noise_BA.pow(2) - log_std_BA - 0.5 * LOG_2PI - log_det_BA).sum(-1)
    return torch.tanh(u_BA), logp_B


class HostActor:
    """The actor's forward and samples for env observations in numpy (vector observations on
    the CPU): a few microseconds per layer, where torch's calls cost more than one observation's
    arithmetic. It reads numpy views of the ParallelMLP's weights, which stay valid: Adam steps
    and state loads write the flat buffer in place. The noise comes from the learner's torch
    generator, in the order and amounts the torch path draws it."""

    def __init__(self, layers: list, relu: bool, action_dim: int | None):
        self.layers = [(w.detach()[0].numpy(), b.detach()[0, 0].numpy()) for w, b in layers]
        self.relu, self.action_dim = relu, action_dim  # action_dim None: Discrete (logits)

    def out(self, obs: np.ndarray) -> np.ndarray:
        """The actor's output [B, O]."""
        h = np.asarray(obs, np.float32).reshape(len(obs), -1)
        for w, b in self.layers[:-1]:
            h = h @ w
            h += b
            np.maximum(h, 0.0, out=h) if self.relu else np.tanh(h, out=h)
        w, b = self.layers[-1]
        return h @ w + b

    def sample(self, obs: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """Policy-space actions: tanh of a Gaussian sample (Box), Gumbel-max indices (Discrete)."""
        out = self.out(obs)
        if self.action_dim is None:  # Gumbel-max: a sample of softmax(logits)
            u = torch.rand(out.shape, generator=gen).clamp_(min=1e-20).numpy()
            return np.argmax(out - np.log(-np.log(u)), axis=-1)
        a = self.action_dim
        noise = torch.randn((len(out), a), generator=gen).numpy()
        std = np.exp(np.clip(out[:, a:], LOG_STD_MIN, LOG_STD_MAX))
        return np.tanh(out[:, :a] + noise * std)

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action: the argmax (Discrete), tanh of the mean (Box)."""
        out = self.out(obs)
        return out.argmax(-1) if self.action_dim is None else np.tanh(out[:, :self.action_dim])
