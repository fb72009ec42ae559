"""NumPy action heads against torch.distributions: values, and gradients against autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from rl_runner.heads import CategoricalHead, GaussianHead


def gaussian(mean, log_std):
    return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)


def inputs(kind: str, seed: int):
    r = np.random.default_rng(seed)
    if kind == "categorical":
        head = CategoricalHead(5)
        out, old = (r.normal(size=(7, 5)) * 2).astype(np.float32), r.normal(size=(7, 5))
        return head, out, None, r.integers(0, 5, 7), old.astype(np.float32), None
    head = GaussianHead((3,))
    out, old = r.normal(size=(7, 3)).astype(np.float32), r.normal(size=(7, 3)).astype(np.float32)
    log_std = np.array([-0.5, 0.0, 0.7], np.float32)
    old_log_std = np.array([0.1, -0.3, 0.2], np.float32)
    return head, out, log_std, (r.normal(size=(7, 3)) * 2).astype(np.float32), old, old_log_std


def torch_dist(kind, out, log_std):
    return Categorical(logits=out) if kind == "categorical" else gaussian(out, log_std)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_evaluate_matches_torch_distributions(kind):
    head, out, log_std, actions, old, old_log_std = inputs(kind, 0)
    logp, ent, kl = head.evaluate(out, log_std, actions, old, old_log_std)
    t = lambda x: None if x is None else torch.from_numpy(x)  # noqa: E731
    new_d, old_d = torch_dist(kind, t(out), t(log_std)), torch_dist(kind, t(old), t(old_log_std))
    np.testing.assert_allclose(logp, new_d.log_prob(t(actions)).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, new_d.entropy().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl, kl_divergence(old_d, new_d).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("with_kl", [False, True])
def test_backward_matches_autograd(kind, with_kl):
    head, out, log_std, actions, old, old_log_std = inputs(kind, 1)
    r = np.random.default_rng(2)
    g_logp, g_ent, g_kl = (r.normal(size=7).astype(np.float32) for _ in range(3))
    head.evaluate(out, log_std, actions, old if with_kl else None, old_log_std)
    g_out, g_log_std = head.backward(g_logp, g_ent, g_kl if with_kl else None)

    out_t = torch.tensor(out, requires_grad=True)
    log_std_t = None if log_std is None else torch.tensor(log_std, requires_grad=True)
    d = torch_dist(kind, out_t, log_std_t)
    loss = (d.log_prob(torch.from_numpy(actions)) * torch.from_numpy(g_logp)).sum()
    loss = loss + (d.entropy() * torch.from_numpy(g_ent)).sum()
    if with_kl:
        old_d = torch_dist(kind, torch.from_numpy(old),
                           None if old_log_std is None else torch.from_numpy(old_log_std))
        loss = loss + (kl_divergence(old_d, d) * torch.from_numpy(g_kl)).sum()
    loss.backward()
    np.testing.assert_allclose(g_out, out_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    if log_std is None:
        assert g_log_std is None
    else:
        np.testing.assert_allclose(g_log_std, log_std_t.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_categorical_samples_follow_the_softmax_and_report_their_log_prob():
    head = CategoricalHead(3)
    logits = np.tile(np.log(np.array([0.2, 0.5, 0.3], np.float32)), (60_000, 1))
    actions, logp = head.sample(logits, None, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / len(actions),
                               [0.2, 0.5, 0.3], atol=0.01)
    np.testing.assert_allclose(logp, head.evaluate(logits, None, actions)[0], atol=1e-6)
    assert list(head.mode(logits[:2])) == [1, 1]


def test_gaussian_samples_have_the_set_mean_and_std_and_report_their_log_prob():
    head = GaussianHead((2,))
    mean = np.tile(np.array([1.0, -2.0], np.float32), (60_000, 1))
    log_std = np.log(np.array([0.5, 2.0], np.float32))
    actions, logp = head.sample(mean, log_std, np.random.default_rng(0))
    np.testing.assert_allclose(actions.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(actions.std(0), [0.5, 2.0], rtol=0.02)
    np.testing.assert_allclose(logp, head.evaluate(mean, log_std, actions)[0], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(head.mode(mean[:2]), mean[:2])
