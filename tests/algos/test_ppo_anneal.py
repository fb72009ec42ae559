"""PPO's anneal_clip: clip_coef decays linearly to 0 over the budget, in the loss as in the log."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.ppo import PPO
from tests.algos.helpers import CARTPOLE_OBS, collect, params

ROLLOUT = 32 * 2  # n_steps x n_envs: env steps per update


def make_ppo(**kw) -> PPO:
    args = dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2), n_envs=2,
                total_steps=4 * ROLLOUT, seed=0, n_steps=32, batch_size=16, n_epochs=2,
                lr=3e-3, clip_coef=0.3)
    return PPO(**{**args, **kw})


def perturbed_rollout(algo: PPO):
    """A real rollout whose old log-probs and values are moved off the current ones, so the
    policy and value clips are active from the first minibatch and their width matters."""
    batch = collect(algo, "CartPole-v1", 2)
    r = np.random.default_rng(0)
    return batch._replace(
        log_probs=(batch.log_probs + r.normal(0, 0.3, batch.log_probs.shape)).astype(np.float32),
        values=(batch.values + r.normal(0, 0.5, batch.values.shape)).astype(np.float32))


def test_the_clip_range_decays_linearly_to_zero_over_the_budget():
    algo = make_ppo(anneal_clip=True)
    batch = collect(algo, "CartPole-v1", 2)
    # each update uses the clip of the progress before it, then counts its rollout's steps
    clips = [algo.update(batch)["charts/clip_coef"] for _ in range(5)]
    assert clips == pytest.approx([0.3, 0.225, 0.15, 0.075, 0.0])
    steady = make_ppo(anneal_clip=False)
    assert [steady.update(batch)["charts/clip_coef"] for _ in range(2)] == [0.3, 0.3]


@pytest.mark.parametrize("anneal_steps, clips", [
    (8 * ROLLOUT, [0.3, 0.2625, 0.225, 0.1875, 0.15]),  # the first half of an 8-update schedule
    (2 * ROLLOUT, [0.3, 0.225, 0.15, 0.075, 0.0]),  # shorter than the budget: the budget's
])
def test_anneal_steps_sets_the_schedules_horizon(anneal_steps, clips):
    algo = make_ppo(anneal_clip=True, anneal_lr=True, anneal_steps=anneal_steps)
    batch = collect(algo, "CartPole-v1", 2)
    lrs = []
    for want in clips:
        lrs.append(algo.current_lr())
        assert algo.update(batch)["charts/clip_coef"] == pytest.approx(want)
    assert lrs == pytest.approx([3e-3 * c / 0.3 for c in clips])


@pytest.mark.parametrize("clip_vloss", [False, True])
def test_an_annealed_update_is_the_update_with_the_reduced_clip(clip_vloss):
    """Halfway through the budget, anneal_clip with clip_coef 0.3 updates exactly as clip_coef
    0.15 does, and differently from 0.3: the schedule reaches the surrogate (and the value clip),
    not only the logged charts/clip_coef."""
    def halfway(**kw) -> PPO:
        algo = make_ppo(clip_vloss=clip_vloss, **kw)
        algo.env_steps = 2 * ROLLOUT  # as after two of the budget's four updates
        return algo

    annealed, reduced, fixed = halfway(anneal_clip=True), halfway(clip_coef=0.15), halfway()
    for other in (reduced, fixed):  # same weights and the same minibatch order
        other.net.load_state_dict(annealed.net.state_dict())
    batch = perturbed_rollout(make_ppo(seed=7))
    m_annealed = annealed.update(batch)
    m_reduced, m_fixed = reduced.update(batch), fixed.update(batch)
    assert m_annealed["charts/clip_coef"] == pytest.approx(0.15)
    assert m_annealed["clipfrac"] == m_reduced["clipfrac"] != m_fixed["clipfrac"]
    for a, b in zip(params(annealed), params(reduced)):
        assert torch.equal(a, b)
    moved = max(float((a - b).abs().max()) for a, b in zip(params(annealed), params(fixed)))
    assert moved > 1e-4, "the clip width made no difference: the test proves nothing"
