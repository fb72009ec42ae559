"""GAIL with learner=trpo through real updates: the TRPO learner moves, is paid -log D, and the
discriminator learns; its state survives a checkpoint."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rl_runner.algos.gail import GAIL
from rl_runner.algos.trpo import TRPO
from rl_runner.checkpoint import load_checkpoint, save_checkpoint
from rl_runner.datasets import Dataset
from tests.algos.helpers import CARTPOLE_OBS, collect

SMALL_TRPO = {"n_steps": 16, "batch_size": 16, "value_epochs": 2}
METRICS = ("surrogate", "kl", "value_loss", "entropy", "explained_variance", "disc_loss",
           "charts/disc_learner_acc", "charts/disc_expert_acc", "gail_reward")


def make_gail(**kw) -> GAIL:
    torch.manual_seed(0)
    args = dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2), n_envs=2,
                total_steps=1000, seed=0, learner="trpo", learner_kwargs=SMALL_TRPO,
                disc_batch_size=32, disc_lr=3e-3)
    return GAIL(**{**args, **kw})


def always_left_expert(n: int = 256) -> Dataset:
    """CartPole-like states, every one answered with action 0: the discriminator can learn it."""
    obs = np.random.default_rng(0).normal(0, 0.05, (n, 4)).astype(np.float32)
    return Dataset(observations=obs, actions=np.zeros(n, np.int64),
                   rewards=np.zeros(n, np.float32), next_observations=obs,
                   terminations=np.zeros(n, bool), truncations=np.zeros(n, bool),
                   episode_starts=np.eye(1, n, dtype=bool)[0], metadata={})


def actor_and_critic(learner: TRPO) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    body = learner.net.body
    tensors = [*body.weights, *body.biases]
    return [t[0].detach().clone() for t in tensors], [t[1].detach().clone() for t in tensors]


def disc_loss_on(gail: GAIL, learner_x: np.ndarray, expert_x: np.ndarray) -> float:
    """The discriminator's cross-entropy on fixed pairs (learner 1, expert 0)."""
    with torch.no_grad():
        l_logit, e_logit = gail.logits(learner_x), gail.logits(expert_x)
        return float(F.binary_cross_entropy_with_logits(l_logit, torch.ones_like(l_logit))
                     + F.binary_cross_entropy_with_logits(e_logit, torch.zeros_like(e_logit)))


def test_trpo_learner_updates_and_the_discriminator_learns():
    gail = make_gail()
    assert isinstance(gail.learner, TRPO)
    gail.fit_dataset(always_left_expert())
    # held-out states, answered as the expert does and the other way
    obs = np.random.default_rng(1).normal(0, 0.05, (128, 4)).astype(np.float32)
    expert_x = gail.inputs(obs, np.zeros(128, np.int64))
    other_x = gail.inputs(obs, np.ones(128, np.int64))
    loss_before = disc_loss_on(gail, other_x, expert_x)
    actor0, critic0 = actor_and_critic(gail.learner)

    paid = {}
    update = gail.learner.update

    def spy(batch):  # what the TRPO learner is trained on
        paid["rewards"] = batch.rewards.copy()
        return update(batch)

    gail.learner.update = spy
    for _ in range(4):
        batch = collect(gail, "CartPole-v1", n_envs=2)
        raw = np.stack(gail._raw_obs)
        metrics = gail.update(batch)
        for key in METRICS:
            assert math.isfinite(metrics[key]), (key, metrics)
        assert 0.0 <= metrics["kl"] <= gail.learner.max_kl  # the trust region holds
        # the learner got -log D of its pairs, as D stands after this update's disc steps
        expected = gail.rewards(gail.inputs(raw.reshape(32, 4), batch.actions.reshape(32)))
        np.testing.assert_allclose(paid["rewards"].reshape(-1), expected, rtol=1e-6)
        assert metrics["gail_reward"] == pytest.approx(float(expected.mean()), rel=1e-6)

    learner = gail.learner
    assert learner.policy_updates == 4 and learner.rejected_steps < 4
    assert learner.grad_steps == gail.grad_steps == 4 * (1 + 2 * (32 // 16))
    actor1, critic1 = actor_and_critic(learner)
    assert not any(torch.equal(a, b) for a, b in zip(actor0, actor1))
    assert not any(torch.equal(a, b) for a, b in zip(critic0, critic1))
    # the discriminator now tells the expert's answer from the other one on unseen states
    assert disc_loss_on(gail, other_x, expert_x) < 0.8 * loss_before
    assert gail.rewards(expert_x).mean() > gail.rewards(other_x).mean() + 0.1


def test_gail_trpo_state_survives_a_checkpoint(tmp_path):
    """Saved and loaded as the trainer does (weights_only): the next update is identical."""
    a = make_gail()
    a.fit_dataset(always_left_expert())
    a.update(collect(a, "CartPole-v1", n_envs=2))
    save_checkpoint(tmp_path / "last.pt", {"algo": a.state_dict()})
    b = make_gail(seed=7)
    b.fit_dataset(always_left_expert())
    b.load_state_dict(load_checkpoint(tmp_path / "last.pt")["algo"])
    assert b.learner.policy_updates == 1
    source = make_gail(seed=9)  # acting would move a's generator: the rollout comes from elsewhere
    batch = collect(source, "CartPole-v1", n_envs=2)
    a._raw_obs, b._raw_obs = list(source._raw_obs), list(source._raw_obs)
    assert a.update(batch) == b.update(batch)
    for pa, pb in zip([*a.learner.net.parameters(), *a.disc.parameters()],
                      [*b.learner.net.parameters(), *b.disc.parameters()]):
        assert torch.equal(pa, pb)
