"""SAC's shared pieces: the squashed Gaussian and its log-density, the log-std bounds and the
metrics an update reports (sac.py's hand-made step and sac_compiled.py's autograd step)."""
from __future__ import annotations

import math

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
