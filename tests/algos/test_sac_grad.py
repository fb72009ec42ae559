"""SAC's CPU fast paths against the torch paths they replace. The hand-written Box step
(sac_grad.BoxStep) against autograd (SAC._box_step): from the same weights on the same
minibatches and noise, the critics, their targets, the actor, the temperature and every Adam
moment agree after many gradient steps, and the constructor picks autograd for what the
hand-written step does not cover. Acting in numpy (sac_math.HostActor) against torch."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.cql import ConservativeSAC, ConservativeTerm
from rl_runner.algos.sac import SAC
from tests.algos.helpers import CARTPOLE_OBS, PENDULUM_OBS, random_replay_batch

ACT2 = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


def pair(**kw) -> tuple[SAC, SAC]:
    """The autograd learner and the hand-written one, from the same weights and noise seed."""
    args = dict(observation_space=PENDULUM_OBS, action_space=ACT2, n_envs=1,
                total_steps=10_000, seed=3, hidden_sizes=[32, 24], batch_size=48, lr=3e-3)
    args.update(kw)
    learners = []
    for _ in range(2):
        torch.manual_seed(0)
        learners.append(SAC(**args))
    auto, manual = learners
    assert auto.manual_grad and manual.manual_grad  # what the constructor picks here
    auto.manual_grad = False

    def no_autograd(*a):
        raise AssertionError("the hand-written learner took the autograd step")
    manual._box_step = no_autograd
    return auto, manual


def flats(algo: SAC) -> dict[str, torch.Tensor]:
    out = {}
    for name, opt in (("actor", algo.actor_opt), ("critic", algo.critics.opt),
                      ("alpha", algo.alpha_opt)):
        out |= {f"{name}.flat": opt.flat, f"{name}.exp_avg": opt.exp_avg,
                f"{name}.exp_avg_sq": opt.exp_avg_sq}
    out["critic_target"] = algo.critics.target.flat
    return out


def run_both(auto: SAC, manual: SAC, updates: int = 15, n_batches: int = 1) -> None:
    start = {k: v.clone() for k, v in flats(manual).items()}
    for i in range(updates):
        batch = random_replay_batch(auto, n_batches=n_batches, seed=i)
        got, want = manual.update(batch), auto.update(batch)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=2e-4, abs=1e-5), (i, key)
    assert manual.grad_steps == auto.grad_steps == updates * n_batches
    for name, value in flats(auto).items():
        got = flats(manual)[name]
        if not name.startswith("alpha.") or manual.learn_alpha:
            assert not torch.equal(got, start[name]), f"{name} never moved"
        torch.testing.assert_close(got, value, rtol=2e-4, atol=2e-6, msg=name)
    assert torch.equal(auto.gen.get_state(), manual.gen.get_state())  # the same draws


@pytest.mark.parametrize("options", [
    {},
    {"ent_coef": 0.2},
    {"activation": "tanh", "hidden_sizes": [32, 24, 16]},
    {"actor_lr": 1e-2, "backup_entropy": False, "target_entropy": -0.5},
], ids=["auto-alpha", "fixed-alpha", "tanh-3-layers", "actor_lr-no-backup"])
def test_hand_written_steps_match_autograd(options):
    run_both(*pair(**options))


def test_several_gradient_steps_per_update_match_autograd():
    run_both(*pair(gradient_steps=3), updates=5, n_batches=3)


def test_one_action_dimension_and_a_saturating_log_std_match_autograd():
    auto, manual = pair(action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32))
    for algo in (auto, manual):  # log-std outputs far past the clamp for some states
        with torch.no_grad():
            algo.actor.weights[-1][0, :, 1].mul_(3000.0)
    obs = torch.from_numpy(random_replay_batch(auto).obs[0])
    raw = auto.actor(obs)[0, :, 1]
    assert (raw > 2).any() and (raw < 2).any()  # the clamp cuts some rows' gradient
    run_both(auto, manual)


def test_the_constructor_picks_autograd_where_the_hand_written_step_does_not_apply():
    common = dict(n_envs=1, total_steps=1000, hidden_sizes=[8], batch_size=8)
    assert not SAC(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2),
                   **common).manual_grad
    frames = gym.spaces.Box(0, 255, (4, 36, 36), np.uint8)
    assert not SAC(observation_space=frames, action_space=ACT2, cnn_channels=[4],
                   cnn_kernels=[8], cnn_strides=[4], cnn_features=16, **common).manual_grad
    term = ConservativeTerm(weight=1.0, lagrange=False, target_gap=5.0, lr=1e-3)
    assert not ConservativeSAC(term=term, observation_space=PENDULUM_OBS, action_space=ACT2,
                               **common).manual_grad
    assert not SAC(observation_space=PENDULUM_OBS, action_space=ACT2, compile=True,
                   **common).manual_grad


@pytest.mark.parametrize("lead", [None, 0, 1], ids=["mixed", "critic-0-everywhere",
                                                     "critic-1-everywhere"])
def test_min_critic_action_grad_matches_autograd_whichever_critic_gives_the_min(lead):
    algo = pair()[1]
    if lead is not None:  # one critic's output bias far below the other's: its rows only
        with torch.no_grad():
            algo.critics.net.biases[-1][lead].sub_(100.0)
    gen = torch.Generator().manual_seed(1)
    obs, actions = torch.randn(64, 3, generator=gen), torch.rand(64, 2, generator=gen) * 2 - 1
    a = actions.clone().requires_grad_(True)
    q_min = algo.critics.net(torch.cat([obs, a], -1))[..., 0].min(0)
    q_min.values.sum().backward()
    picked = int(q_min.indices.sum())
    assert picked == {None: picked, 0: 0, 1: 64}[lead] and (lead is not None or 0 < picked < 64)
    got_q, got_grad = algo.min_q_action_grad(obs, actions)
    torch.testing.assert_close(got_q, q_min.values.detach())
    torch.testing.assert_close(got_grad, a.grad)


@pytest.mark.parametrize("space", [gym.spaces.Box(-2, 2, (2,), np.float32),
                                   gym.spaces.Discrete(3)], ids=["box", "discrete"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numpy_acting_draws_what_the_torch_path_draws(space, activation):
    """The numpy forward (vector observations on the CPU) samples from the same distribution
    with the same generator stream as the torch path it replaces."""
    torch.manual_seed(0)
    algo = SAC(observation_space=PENDULUM_OBS, action_space=space, n_envs=1, total_steps=1000,
               hidden_sizes=[32, 32], activation=activation)
    obs = np.random.default_rng(2).normal(size=(256, 3)).astype(np.float32)
    with torch.no_grad():
        algo.actor.biases[-1].normal_()  # log-stds and logits away from their start
    host, start = algo.host_actor, algo.gen.get_state()
    assert host is not None
    got = [algo.explore(obs), algo.act(obs), algo.act(obs, deterministic=True)]
    algo.host_actor, numpy_state = None, algo.gen.get_state()
    algo.gen.set_state(start)
    want = [algo.explore(obs), algo.act(obs), algo.act(obs, deterministic=True)]
    assert torch.equal(algo.gen.get_state(), numpy_state)  # the same draws from the stream
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(got[0], got[1])  # samples, not the mode
