"""ActionDist's hand-written math against torch.distributions; ParallelMLP against plain MLPs."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from rl_runner.nets import ActionDist, ActorCritic, ParallelMLP

DISCRETE = gym.spaces.Discrete(5)
BOX = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)


def gaussian(mean, log_std):
    return Independent(Normal(mean, log_std.exp().expand_as(mean)), 1)


def test_categorical_log_prob_and_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g) * 3
    actions = torch.randint(0, 5, (7,), generator=g)
    logp, ent = ActionDist(DISCRETE).log_prob_entropy(logits, None, actions)
    ref = Categorical(logits=logits)
    torch.testing.assert_close(logp, ref.log_prob(actions))
    torch.testing.assert_close(ent, ref.entropy())


def test_gaussian_log_prob_and_entropy():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(7, 3, generator=g)
    log_std = torch.tensor([-0.5, 0.0, 0.7])
    actions = torch.randn(7, 3, generator=g) * 2
    logp, ent = ActionDist(BOX).log_prob_entropy(mean, log_std, actions)
    ref = gaussian(mean, log_std)
    torch.testing.assert_close(logp, ref.log_prob(actions))
    torch.testing.assert_close(ent, ref.entropy())


def test_categorical_kl():
    g = torch.Generator().manual_seed(2)
    old, new = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    kl = ActionDist(DISCRETE).kl(old, new, None, None)
    torch.testing.assert_close(kl, kl_divergence(Categorical(logits=old), Categorical(logits=new)))
    assert torch.allclose(ActionDist(DISCRETE).kl(old, old, None, None), torch.zeros(6),
                          atol=1e-6)


def test_gaussian_kl():
    g = torch.Generator().manual_seed(3)
    old, new = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    old_ls, new_ls = torch.tensor([0.1, -0.3, 0.5]), torch.tensor([-0.2, 0.4, 0.0])
    kl = ActionDist(BOX).kl(old, new, old_ls, new_ls)
    torch.testing.assert_close(kl, kl_divergence(gaussian(old, old_ls), gaussian(new, new_ls)))


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_sample_log_prob_matches_log_prob_of_the_sample(space):
    dist = ActionDist(space)
    g = torch.Generator().manual_seed(4)
    out = torch.randn(64, dist.n_out, generator=g)
    log_std = None if dist.discrete else torch.tensor([-1.0, 0.0, 0.5])
    actions, logp = dist.sample(out, log_std, g)
    assert actions.shape == (64, *dist.action_shape)
    torch.testing.assert_close(logp, dist.log_prob_entropy(out, log_std, actions)[0])


def test_categorical_samples_follow_the_softmax():
    dist = ActionDist(gym.spaces.Discrete(3))
    logits = torch.tensor([[1.0, 0.0, -1.0]]).expand(40000, 3)
    actions, _ = dist.sample(logits, None, torch.Generator().manual_seed(5))
    freq = torch.bincount(actions, minlength=3).float() / len(actions)
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.01, rtol=0)


def test_gaussian_samples_have_the_set_mean_and_std():
    dist = ActionDist(BOX)
    mean = torch.tensor([[0.5, -1.0, 2.0]]).expand(40000, 3)
    log_std = torch.tensor([-1.0, 0.0, 0.5])
    actions, _ = dist.sample(mean, log_std, torch.Generator().manual_seed(6))
    torch.testing.assert_close(actions.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(actions.std(0), log_std.exp(), atol=0.03, rtol=0)


def test_mode():
    out = torch.tensor([[0.1, 3.0, -1.0, 0.0, 0.2]])
    assert ActionDist(DISCRETE).mode(out).tolist() == [1]
    mean = torch.tensor([[0.3, -0.2, 5.0]])
    assert torch.equal(ActionDist(BOX).mode(mean), mean)


def test_parallel_mlp_is_k_independent_mlps():
    torch.manual_seed(0)
    mlp = ParallelMLP(4, [8, 6], 3, k=2, activation="tanh")
    x = torch.randn(5, 4)
    out = mlp(x)
    assert out.shape == (2, 5, 3)
    for j in range(2):
        h = x
        for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
            h = h @ w[j] + b[j, 0]
            if i < len(mlp.weights) - 1:
                h = torch.tanh(h)
        torch.testing.assert_close(out[j], h)


def test_actor_critic_shapes_and_log_std():
    ac = ActorCritic(4, BOX, [16], log_std_init=-0.5)
    out, value = ac(torch.randn(7, 4))
    assert out.shape == (7, 3) and value.shape == (7,)
    assert torch.equal(ac.log_std.detach(), torch.full((3,), -0.5))
    assert ActorCritic(4, DISCRETE, [16]).log_std is None
