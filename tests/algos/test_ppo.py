"""PPO: update mechanics, Box action clipping, KL-penalty variant; learning check (slow)."""
from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.base import Rollout
from rl_runner.algos.ppo import PPO
from rl_runner.errors import UserError
from rl_runner.optim import FlatAdam
from tests.algos.helpers import (CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS, bandit_rollout,
                                 collect, params, prob_of_action_0)
from tests.conftest import compose

LOSS_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "learning_rate")


def cartpole_ppo(**kw) -> PPO:
    args = dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2), n_envs=2,
                total_steps=10_000, seed=0, n_steps=32, batch_size=16, n_epochs=2)
    return PPO(**{**args, **kw})


def pendulum_ppo(**kw) -> PPO:
    args = dict(observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT, n_envs=2,
                total_steps=10_000, seed=0, n_steps=32, batch_size=16, n_epochs=2)
    return PPO(**{**args, **kw})


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_update_returns_finite_metrics_and_changes_parameters(kind):
    algo = cartpole_ppo() if kind == "discrete" else pendulum_ppo()
    batch = collect(algo, "CartPole-v1" if kind == "discrete" else "Pendulum-v1", 2)
    before = params(algo)
    metrics = algo.update(batch)
    for key in LOSS_KEYS:
        assert math.isfinite(metrics[key]), key
    assert metrics["learning_rate"] == pytest.approx(3e-4)
    assert metrics["entropy"] > 0
    assert 0.0 <= metrics["clipfrac"] <= 1.0
    assert metrics["approx_kl"] >= 0.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert algo.grad_steps == 2 * (64 // 16)  # n_epochs x minibatches
    changed = [not torch.equal(a, b) for a, b in zip(before, params(algo))]
    assert all(changed)  # actor, critic (and log-std for Box) all learn


def test_update_raises_the_probability_of_the_better_action():
    algo = cartpole_ppo(lr=1e-2)
    p0 = prob_of_action_0(algo)
    for _ in range(3):
        algo.update(bandit_rollout(algo))
    assert prob_of_action_0(algo) > p0 + 0.05


def test_update_is_deterministic_given_the_seed():
    a, b = cartpole_ppo(seed=5), cartpole_ppo(seed=5)
    b.net.load_state_dict(a.net.state_dict())
    batch = collect(cartpole_ppo(seed=9), "CartPole-v1", 2)
    assert a.update(batch) == b.update(batch)
    for pa, pb in zip(params(a), params(b)):
        assert torch.equal(pa, pb)


def random_rollout(obs_dim: int, action_space: gym.Space, T: int, N: int) -> Rollout:
    r = np.random.default_rng(0)
    shape = (T, N, *action_space.shape)
    actions = r.integers(0, 2, shape) if isinstance(action_space, gym.spaces.Discrete) else \
        r.uniform(-1, 1, shape).astype(np.float32)
    f = lambda: r.normal(size=(T, N)).astype(np.float32)  # noqa: E731
    return Rollout(r.normal(size=(T, N, obs_dim)).astype(np.float32), actions, f() - 1.0, f(),
                   f(), r.random((T, N)) < 0.05, f())


@pytest.mark.parametrize("obs_dim, box, kw", [
    (4, False, dict()),
    (4, False, dict(hidden_sizes=[256, 256], activation="relu")),
    (64, False, dict()),  # the first layer's products through numpy's BLAS
    (17, True, dict(hidden_sizes=[256, 256], batch_size=64)),
    (64, False, dict(batch_size=2048)),
])
def test_update_gives_the_same_bits_on_one_and_two_threads(obs_dim, box, kw):
    # trainer.torch_threads=auto gives big products every core, and its ThreadTuner runs some
    # updates on one thread: that must not part two runs of one seed
    from rl_runner.threads import set_threads

    action_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32) if box else gym.spaces.Discrete(2)
    space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    batch = random_rollout(obs_dim, action_space, 256, 8)
    args = dict(observation_space=space, action_space=action_space, n_envs=8,
                total_steps=10_000, n_steps=256, batch_size=256, n_epochs=2)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            set_threads(1)
            torch.manual_seed(0)
            algo = PPO(**{**args, **kw})
            set_threads(threads)
            metrics = algo.update(batch)
            results.append((metrics, params(algo)))
    finally:
        set_threads(before)
    (m1, p1), (m2, p2) = results
    assert m1 == m2
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_auto_threads_stay_at_one_for_an_mlp_on_a_gpu():
    algo = cartpole_ppo(n_envs=8, batch_size=256)
    assert algo.preferred_threads(2) == 2
    algo.device = torch.device("cuda")  # the rule reads the device only
    assert algo.preferred_threads(2) == 1


def test_box_actions_are_clipped_for_the_env_but_log_probs_are_of_the_raw_sample():
    algo = pendulum_ppo(log_std_init=1.5)  # std ~4.5 on a [-2, 2] action range
    obs = np.random.default_rng(0).normal(size=(256, 3)).astype(np.float32)
    env_actions, raw, logp, _, policy_obs = algo.explore(obs)
    assert env_actions.shape == raw.shape == (256, 1)
    assert np.all(env_actions >= -2.0) and np.all(env_actions <= 2.0)
    outside = np.abs(raw[:, 0]) > 2.0
    assert outside.sum() > 50, "the test needs samples outside the bounds"
    np.testing.assert_array_equal(env_actions, np.clip(raw, -2.0, 2.0))
    with torch.no_grad():
        out, _ = algo.net(torch.from_numpy(policy_obs))
        raw_logp = algo.net.dist.log_prob_entropy(out, algo.net.log_std, torch.from_numpy(raw))[0]
        clipped_logp = algo.net.dist.log_prob_entropy(out, algo.net.log_std,
                                                  torch.from_numpy(env_actions))[0]
    np.testing.assert_allclose(logp, raw_logp.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logp[outside], clipped_logp.numpy()[outside])
    # act(): clipped too, sampled and deterministic
    sampled = algo.act(obs)
    assert np.all(np.abs(sampled) <= 2.0) and np.any(np.abs(sampled) == 2.0)
    with torch.no_grad():
        algo.net.body.biases[-1][0].add_(10.0)  # actor mean far above the upper bound
    assert np.all(algo.act(obs, deterministic=True) == 2.0)


def test_discrete_act_deterministic_is_the_argmax():
    algo = cartpole_ppo()
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    with torch.no_grad():
        logits, _ = algo.net(torch.from_numpy(obs))
    np.testing.assert_array_equal(algo.act(obs, deterministic=True), logits.argmax(-1).numpy())


def test_anneal_lr_decays_linearly_over_the_budget():
    algo = cartpole_ppo(total_steps=128, anneal_lr=True, lr=1e-3)
    batch = collect(algo, "CartPole-v1", 2)  # 64 env steps per update
    first, second = algo.update(batch)["learning_rate"], algo.update(batch)["learning_rate"]
    assert first == pytest.approx(1e-3)
    assert second == pytest.approx(0.5e-3)


def test_kl_early_stop_ends_the_epochs_early():
    full = cartpole_ppo(n_epochs=10, lr=1e-2)
    early = cartpole_ppo(n_epochs=10, lr=1e-2, kl_early_stop=1e-7)
    early.net.load_state_dict(full.net.state_dict())
    batch = collect(full, "CartPole-v1", 2)
    full.update(batch)
    metrics = early.update(batch)
    assert full.grad_steps == 10 * 4
    assert 1 <= early.grad_steps < full.grad_steps
    assert math.isfinite(metrics["policy_loss"])


def test_kl_penalty_objective_adapts_beta():
    algo = cartpole_ppo(objective="kl_penalty", kl_beta=1.0, kl_penalty_target=1e-6, lr=1e-2)
    batch = collect(algo, "CartPole-v1", 2)
    metrics = algo.update(batch)
    assert metrics["kl"] > 1.5e-6
    assert metrics["charts/kl_beta"] == algo.kl_beta == 2.0  # KL above target: beta doubles
    assert algo.state_dict()["kl_beta"] == 2.0
    calm = cartpole_ppo(objective="kl_penalty", kl_beta=1.0, kl_penalty_target=10.0)
    assert calm.update(batch)["charts/kl_beta"] == 0.5  # KL far below target: beta halves


def reference_update(algo: PPO, net, batch, clip: float) -> list[torch.Tensor]:
    """The same update written with torch autograd, for one whole-rollout minibatch per epoch."""
    opt = FlatAdam(net.parameters(), lr=algo.lr, eps=1e-5)
    adv, ret = algo.advantages(batch, algo.gae_lambda)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x).reshape(adv.size, *x.shape[2:]))  # noqa: E731
    obs, act, old_logp, old_v = t(batch.obs), t(batch.actions), t(batch.log_probs), t(batch.values)
    adv, ret = t(adv), t(ret.astype(np.float32))
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    with torch.no_grad():
        old_out = net(obs)[0]
        old_log_std = None if net.log_std is None else net.log_std.clone()
    for _ in range(algo.n_epochs):
        out, v = net(obs)
        logp, entropy = net.dist.log_prob_entropy(out, net.log_std, act)
        ratio = (logp - old_logp).exp()
        if algo.objective == "kl_penalty":
            kl = net.dist.kl(old_out, out, old_log_std, net.log_std)
            pg_loss = -(ratio * adv).mean() + algo.kl_beta * kl.mean()
        else:
            pg_loss = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
        if algo.clip_vloss:
            v_clipped = old_v + (v - old_v).clamp(-clip, clip)
            v_loss = torch.max((v - ret) ** 2, (v_clipped - ret) ** 2).mean()
        else:
            v_loss = ((v - ret) ** 2).mean()
        loss = pg_loss + algo.vf_coef * v_loss - algo.ent_coef * entropy.mean()
        opt.zero_grad()
        loss.backward()
        opt.clip_grad_norm(algo.max_grad_norm)
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("kind,kw", [
    ("discrete", {}),
    ("discrete", {"clip_vloss": True, "ent_coef": 0.01}),
    ("box", {"clip_vloss": True, "ent_coef": 0.01}),
    ("discrete", {"objective": "kl_penalty", "ent_coef": 0.01}),
    ("box", {"objective": "kl_penalty", "kl_beta": 3.0}),
])
def test_update_matches_a_torch_autograd_reference(kind, kw):
    """The numpy gradient path gives the parameters that autograd on the PPO loss gives."""
    make = cartpole_ppo if kind == "discrete" else pendulum_ppo
    algo = make(batch_size=64, n_epochs=3, lr=3e-3, **kw)
    batch = collect(algo, "CartPole-v1" if kind == "discrete" else "Pendulum-v1", 2)
    r = np.random.default_rng(0)
    # old log-probs and values off the current ones, so that both clips are active somewhere
    batch = batch._replace(
        log_probs=(batch.log_probs + r.normal(0, 0.3, batch.log_probs.shape)).astype(np.float32),
        values=(batch.values + r.normal(0, 0.5, batch.values.shape)).astype(np.float32))
    net = copy.deepcopy(algo.net)
    expected = reference_update(algo, net, batch, algo.clip_coef)
    metrics = algo.update(batch)
    assert 0.05 < metrics["clipfrac"] < 0.95
    for mine, ref in zip(params(algo), expected):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=2e-6)


def test_bad_constructor_arguments():
    with pytest.raises(UserError, match="objective"):
        cartpole_ppo(objective="trust_region")
    with pytest.raises(UserError, match="batch_size"):
        cartpole_ppo(batch_size=65)  # rollout is 32 x 2


@pytest.mark.slow
def test_ppo_learns_cartpole(tmp_path):
    from rl_runner.trainer import train

    cfg = compose(["algo=ppo", "env=cartpole", "seed=0", "trainer.progress=false",
                   "trainer.total_steps=100000"])
    res = train(cfg, tmp_path / "run")
    assert res["env_steps"] <= 100_000
    assert res["best_eval_return_mean"] >= 475, res
