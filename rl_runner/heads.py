"""Action distributions in NumPy, with the gradients of what the on-policy losses use.

The same distributions as nets.ActionDist (which stays for algorithms that use torch autograd):
Categorical over logits for Discrete spaces, diagonal Gaussian with a state-independent log-std
for Box spaces. `evaluate` computes log-probs, entropies and optionally KL(old || new) for a batch
and remembers what `backward` needs to turn loss gradients into gradients of the network output.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

LOG_2PI = math.log(2 * math.pi)


def log_softmax(logits_BA: np.ndarray) -> np.ndarray:
    z = logits_BA - logits_BA.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class CategoricalHead:
    """Categorical distribution over the actor's logits."""

    discrete = True

    def __init__(self, n: int):
        self.n_out = n
        self.action_shape: tuple[int, ...] = ()

    def sample(self, logits_BA: np.ndarray, log_std_A, rng: np.random.Generator):
        """Actions by Gumbel-max and their log-probabilities."""
        u = rng.random(logits_BA.shape, dtype=np.float32)
        np.maximum(u, 1e-20, out=u)
        actions_B = np.argmax(logits_BA - np.log(-np.log(u)), axis=1)
        logp_B = log_softmax(logits_BA)[np.arange(len(actions_B)), actions_B]
        return actions_B, logp_B

    def mode(self, logits_BA: np.ndarray) -> np.ndarray:
        return logits_BA.argmax(axis=1)

    def evaluate(self, logits_BA: np.ndarray, log_std_A, actions_B: np.ndarray,
                 old_logits_BA: np.ndarray | None = None, old_log_std_A=None):
        """(log-prob, entropy, KL(old || new) or None) per sample."""
        rows = np.arange(len(actions_B))
        logp_BA = log_softmax(logits_BA)
        p_BA = np.exp(logp_BA)
        entropy_B = -(p_BA * logp_BA).sum(axis=1)
        kl_B = old_p_BA = None
        if old_logits_BA is not None:
            old_logp_BA = log_softmax(old_logits_BA)
            old_p_BA = np.exp(old_logp_BA)
            kl_B = (old_p_BA * (old_logp_BA - logp_BA)).sum(axis=1)
        self._saved = (rows, actions_B, logp_BA, p_BA, entropy_B, old_p_BA)
        return logp_BA[rows, actions_B], entropy_B, kl_B

    def backward(self, g_logp_B, g_entropy_B, g_kl_B=None):
        """Gradient w.r.t. the logits [B, A] (and None for the absent log-std)."""
        rows, actions_B, logp_BA, p_BA, entropy_B, old_p_BA = self._saved
        # d logp_a / dz = onehot(a) - p;  d H / dz = -p (log p + H);  d KL / dz = p - p_old
        inner = -np.reshape(g_logp_B, (-1, 1)) - np.reshape(g_entropy_B, (-1, 1)) * (
            logp_BA + entropy_B[:, None])
        if g_kl_B is not None:
            inner = inner + np.reshape(g_kl_B, (-1, 1))
        g_BA = p_BA * inner
        g_BA[rows, actions_B] += g_logp_B
        if g_kl_B is not None:
            g_BA -= np.reshape(g_kl_B, (-1, 1)) * old_p_BA
        return g_BA, None


class GaussianHead:
    """Diagonal Gaussian: the actor's output is the mean, log-std is a separate parameter."""

    discrete = False

    def __init__(self, shape: tuple[int, ...]):
        self.n_out = int(np.prod(shape))
        self.action_shape = tuple(shape)

    def sample(self, mean_BA: np.ndarray, log_std_A: np.ndarray, rng: np.random.Generator):
        noise = rng.standard_normal(mean_BA.shape, dtype=np.float32)
        actions = mean_BA + noise * np.exp(log_std_A)
        logp = (-0.5 * noise * noise - log_std_A - 0.5 * LOG_2PI).sum(axis=1)
        return actions, logp

    def mode(self, mean_BA: np.ndarray) -> np.ndarray:
        return mean_BA.copy()

    def evaluate(self, mean_BA: np.ndarray, log_std_A: np.ndarray, actions_BA: np.ndarray,
                 old_mean_BA: np.ndarray | None = None, old_log_std_A: np.ndarray | None = None):
        std_A = np.exp(log_std_A)
        z_BA = (actions_BA - mean_BA) / std_A
        logp_B = (-0.5 * z_BA * z_BA - log_std_A - 0.5 * LOG_2PI).sum(axis=1)
        entropy = float((log_std_A + 0.5 * (1.0 + LOG_2PI)).sum())
        entropy_B = np.full(len(mean_BA), entropy, np.float32)
        kl_B = ratio_BA = diff_BA = None
        if old_mean_BA is not None:
            diff_BA = mean_BA - old_mean_BA
            # (var_old + (mu_old - mu)^2) / var, the term KL and its gradient share
            ratio_BA = (np.exp(2 * old_log_std_A) + diff_BA * diff_BA) / (std_A * std_A)
            kl_B = (log_std_A - old_log_std_A + 0.5 * ratio_BA - 0.5).sum(axis=1)
        self._saved = (z_BA, std_A, diff_BA, ratio_BA)
        return logp_B, entropy_B, kl_B

    def backward(self, g_logp_B, g_entropy_B, g_kl_B=None):
        """Gradients w.r.t. the mean [B, A] and the log-std [A]."""
        z_BA, std_A, diff_BA, ratio_BA = self._saved
        g_logp_B1 = np.reshape(g_logp_B, (-1, 1))
        # d logp / d mu = z / std;  d logp / d log_std = z^2 - 1;  d H / d log_std = 1
        g_mean_BA = g_logp_B1 * z_BA / std_A
        g_log_std_A = (g_logp_B1 * (z_BA * z_BA - 1.0)).sum(axis=0)
        g_log_std_A += np.sum(np.broadcast_to(g_entropy_B, (len(z_BA),)))
        if g_kl_B is not None:
            g_kl_B1 = np.reshape(g_kl_B, (-1, 1))
            g_mean_BA += g_kl_B1 * diff_BA / (std_A * std_A)
            g_log_std_A += (g_kl_B1 * (1.0 - ratio_BA)).sum(axis=0)
        return g_mean_BA, g_log_std_A


def make_head(action_space: gym.Space) -> CategoricalHead | GaussianHead:
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalHead(int(action_space.n))
    return GaussianHead(tuple(action_space.shape))
