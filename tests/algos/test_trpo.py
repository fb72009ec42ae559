"""TRPO: conjugate gradient, Fisher-vector products, line search, value fitting, state; learning
check (slow)."""
from __future__ import annotations

import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.trpo import TRPO, PolicyBatch, conjugate_gradient
from rl_runner.errors import UserError
from tests.algos.helpers import (CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS, bandit_rollout,
                                 collect, params, prob_of_action_0)
from tests.conftest import FAST, compose, read_scalars

METRIC_KEYS = ("surrogate", "kl", "value_loss", "entropy", "charts/line_search_steps",
               "charts/line_search_rejected", "charts/line_search_reject_rate",
               "explained_variance", "learning_rate")


def cartpole_trpo(**kw) -> TRPO:
    args = dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2), n_envs=2,
                total_steps=10_000, seed=0, n_steps=32, batch_size=16, value_epochs=3)
    return TRPO(**{**args, **kw})


def pendulum_trpo(**kw) -> TRPO:
    args = dict(observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT, n_envs=2,
                total_steps=10_000, seed=0, n_steps=32, batch_size=16, value_epochs=3)
    return TRPO(**{**args, **kw})


def make(kind: str, **kw) -> tuple[TRPO, str]:
    if kind == "discrete":
        return cartpole_trpo(**kw), "CartPole-v1"
    return pendulum_trpo(**kw), "Pendulum-v1"


def actor_rows(algo: TRPO) -> list[torch.Tensor]:
    """Row 0 of every ParallelMLP tensor, and the log-std: what the policy step may change."""
    body = algo.net.body
    rows = [t[0].detach().clone() for t in [*body.weights, *body.biases]]
    return rows + ([algo.net.log_std.detach().clone()] if algo.net.log_std is not None else [])


def critic_rows(algo: TRPO) -> list[torch.Tensor]:
    body = algo.net.body
    return [t[1].detach().clone() for t in [*body.weights, *body.biases]]


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def none_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return not any(torch.equal(x, y) for x, y in zip(a, b))


# ---- conjugate gradient -----------------------------------------------------------------------
def test_conjugate_gradient_solves_a_known_spd_system():
    r = np.random.default_rng(0)
    m = r.normal(size=(12, 12))
    a = m @ m.T + 0.5 * np.eye(12)
    b = r.normal(size=12)
    x = conjugate_gradient(lambda v: a @ v, b, iters=12)  # exact in n steps, up to rounding
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    # fewer iterations: an approximation whose residual shrinks as iterations are added
    residuals = [np.linalg.norm(a @ conjugate_gradient(lambda v: a @ v, b, iters=k) - b)
                 for k in (1, 4, 8)]
    assert residuals[0] > residuals[1] > residuals[2]


def test_conjugate_gradient_stops_on_a_zero_right_hand_side():
    calls = []
    x = conjugate_gradient(lambda v: calls.append(1) or v, np.zeros(5), iters=10)
    assert not calls and np.all(x == 0)


# ---- Fisher-vector products -------------------------------------------------------------------
def split_theta(algo: TRPO, theta: torch.Tensor) -> list[torch.Tensor]:
    """The flat actor vector (the order the algorithm uses) as tensors shaped like its leaves."""
    sizes = [t.numel() for t in algo._leaves]
    return [p.reshape(t.shape) for p, t in zip(torch.split(theta, sizes), algo._leaves)]


def actor_out(algo: TRPO, theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    parts = split_theta(algo, theta)
    n_layers = len(algo.net.body.weights)
    h = obs
    for i in range(n_layers):
        h = torch.addmm(parts[2 * i + 1], h, parts[2 * i])
        if i < n_layers - 1:
            h = torch.tanh(h)
    return h


def random_policy_batch(algo: TRPO, rows: int = 24) -> PolicyBatch:
    r = np.random.default_rng(3)
    obs = r.normal(size=(rows, algo.net.body.weights[0].shape[1])).astype(np.float32)
    out = algo.forward(obs)[0].copy()
    log_std = None if algo.log_std is None else algo.log_std.copy()
    actions = algo.head.sample(out, log_std, r)[0]
    logp = algo.head.evaluate(out, log_std, actions)[0]
    adv = r.normal(size=rows).astype(np.float32)
    return PolicyBatch(obs, actions, logp.astype(np.float32), adv, out, log_std)


def test_fisher_vector_product_equals_the_explicit_fisher_matrix():
    """Discrete: F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T, built by hand."""
    algo = cartpole_trpo(hidden_sizes=[5, 3], cg_damping=0.05,
                         action_space=gym.spaces.Discrete(3))
    pb = random_policy_batch(algo)
    g, fvp = algo.surrogate_gradient_and_fvp(pb)
    theta = torch.from_numpy(algo._flat_np[algo._actor_idx].astype(np.float64))
    obs = torch.from_numpy(pb.obs).double()
    logp = lambda th: torch.log_softmax(actor_out(algo, th, obs), -1)  # noqa: E731
    jac_BAP = torch.autograd.functional.jacobian(logp, theta)
    p_BA = logp(theta).exp().detach()
    fisher = torch.einsum("ba,bap,baq->pq", p_BA, jac_BAP, jac_BAP) / len(obs)
    v = np.random.default_rng(1).normal(size=len(theta))
    np.testing.assert_allclose(fvp(v), fisher.numpy() @ v + 0.05 * v, rtol=1e-3, atol=1e-5)
    # and the surrogate's gradient is mean(A grad log pi) at theta_old (ratio 1)
    acts = torch.from_numpy(pb.actions)
    expected_g = (jac_BAP[torch.arange(len(acts)), acts]
                  * torch.from_numpy(pb.adv).double()[:, None]).mean(0)
    np.testing.assert_allclose(g, expected_g.numpy(), rtol=1e-3, atol=1e-6)


def test_fisher_vector_product_equals_the_hessian_of_the_kl_for_box_actions():
    """Box: the autograd Hessian of mean KL(pi_old || pi_theta) at theta_old, log-std included."""
    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    algo = pendulum_trpo(hidden_sizes=[4, 3], cg_damping=0.0, action_space=box,
                         log_std_init=-0.3)
    pb = random_policy_batch(algo)
    _, fvp = algo.surrogate_gradient_and_fvp(pb)
    theta0 = torch.from_numpy(algo._flat_np[algo._actor_idx].astype(np.float64))
    obs = torch.from_numpy(pb.obs).double()
    old_mean = torch.from_numpy(pb.old_out).double()
    old_log_std = torch.from_numpy(pb.old_log_std).double()
    n_std = len(old_log_std)

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        mean, log_std = actor_out(algo, theta, obs), theta[-n_std:]
        return algo.net.dist.kl(old_mean, mean, old_log_std, log_std).mean()

    hessian = torch.autograd.functional.hessian(mean_kl, theta0).numpy()
    assert hessian.shape == (len(theta0), len(theta0))
    for seed in range(3):
        v = np.random.default_rng(seed).normal(size=len(theta0))
        np.testing.assert_allclose(fvp(v), hessian @ v, rtol=1e-3, atol=1e-5)


# ---- line search ------------------------------------------------------------------------------
def natural_step(algo: TRPO, pb: PolicyBatch) -> np.ndarray:
    g, fvp = algo.surrogate_gradient_and_fvp(pb)
    x = conjugate_gradient(fvp, g, algo.cg_max_steps)
    return (math.sqrt(2 * algo.max_kl / (x @ fvp(x))) * x).astype(np.float32)


def kl_after(algo: TRPO, pb: PolicyBatch, step: np.ndarray) -> float:
    """Mean KL(old || theta_old + step), by torch, leaving the parameters as they were."""
    flat, idx = algo._flat_np, algo._actor_idx
    theta_old = flat[idx]
    flat[idx] = theta_old + step
    with torch.no_grad():
        out, _ = algo.net(torch.from_numpy(pb.obs))
        kl = algo.net.dist.kl(torch.from_numpy(pb.old_out), out, None, None).mean()
    flat[idx] = theta_old
    return float(kl)


def test_line_search_rejects_a_step_that_violates_the_kl_limit():
    algo = cartpole_trpo(line_search_max_iter=1)
    pb, _ = algo.policy_batch(collect(algo, "CartPole-v1", 2))
    huge = 30 * natural_step(algo, pb)
    assert kl_after(algo, pb, huge) > algo.max_kl  # the surrogate may well improve
    before = params(algo)
    result = algo.line_search(pb, huge)
    assert not result.accepted
    assert result.shrinks == 1 and result.kl == 0.0
    assert all_equal(before, params(algo))  # restored exactly


def test_line_search_shrinks_an_oversized_step_into_the_trust_region():
    algo = cartpole_trpo(line_search_max_iter=40, line_search_shrinking_factor=0.5)
    pb, _ = algo.policy_batch(collect(algo, "CartPole-v1", 2))
    huge = 30 * natural_step(algo, pb)
    before = actor_rows(algo)
    result = algo.line_search(pb, huge)
    assert result.accepted and result.shrinks >= 2
    assert 0 < result.kl <= algo.max_kl
    assert result.surrogate > 0  # improved on the old surrogate, mean(A) = 0
    # what is now in the parameters is the accepted step, measured independently
    step = huge * 0.5 ** result.shrinks
    kept = algo._flat_np[algo._actor_idx].copy()
    algo._flat_np[algo._actor_idx] = kept - step
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, actor_rows(algo)))
    algo._flat_np[algo._actor_idx] = kept
    # the reported KL is that of the kept parameters
    assert kl_after(algo, pb, np.zeros_like(step)) == pytest.approx(result.kl, rel=1e-3)


def test_line_search_rejects_a_step_that_lowers_the_surrogate():
    algo = cartpole_trpo()
    pb, _ = algo.policy_batch(collect(algo, "CartPole-v1", 2))
    backwards = -natural_step(algo, pb)  # inside the KL limit, but downhill at every scale
    before = params(algo)
    result = algo.line_search(pb, backwards)
    assert not result.accepted and result.shrinks == algo.max_iter
    assert all_equal(before, params(algo))


# ---- the update -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_update_returns_finite_metrics_and_moves_actor_and_critic(kind):
    algo, env_id = make(kind)
    batch = collect(algo, env_id, 2)
    before_actor, before_critic = actor_rows(algo), critic_rows(algo)
    metrics = algo.update(batch)
    for key in METRIC_KEYS:
        assert math.isfinite(metrics[key]), key
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["learning_rate"] == pytest.approx(1e-3)
    assert metrics["entropy"] > 0
    assert metrics["charts/line_search_rejected"] == 0.0
    assert 0 < metrics["kl"] <= algo.max_kl  # the trust region holds
    assert metrics["surrogate"] > 0  # the old surrogate is mean(normalised A) = 0
    assert none_equal(before_actor, actor_rows(algo))  # log-std included for Box
    assert none_equal(before_critic, critic_rows(algo))
    assert algo.grad_steps == 1 + 3 * (64 // 16)  # the policy step + value_epochs x minibatches
    assert algo.env_steps == 64
    if kind == "box":
        assert metrics["charts/action_std"] < 1.5


def test_policy_step_leaves_the_critic_alone():
    algo = pendulum_trpo()
    pb, _ = algo.policy_batch(collect(algo, "Pendulum-v1", 2))
    before_actor, before_critic = actor_rows(algo), critic_rows(algo)
    assert algo.policy_step(pb).accepted
    assert all_equal(before_critic, critic_rows(algo))
    assert none_equal(before_actor, actor_rows(algo))


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_value_fitting_moves_only_the_critic(kind):
    algo, env_id = make(kind, value_epochs=5)
    pb, ret = algo.policy_batch(collect(algo, env_id, 2))
    before_actor, before_critic = actor_rows(algo), critic_rows(algo)
    first = algo.fit_value(pb.obs, ret)
    second = algo.fit_value(pb.obs, ret)
    assert second < first
    assert all_equal(before_actor, actor_rows(algo))  # bit for bit: Adam's step there is 0
    assert none_equal(before_critic, critic_rows(algo))
    idx = torch.from_numpy(algo._actor_idx)
    assert torch.all(algo.optimizer.exp_avg[idx] == 0)
    assert torch.all(algo.optimizer.exp_avg_sq[idx] == 0)


def test_update_raises_the_probability_of_the_better_action():
    algo = cartpole_trpo(n_steps=16)
    p0 = prob_of_action_0(algo)
    for _ in range(3):
        algo.update(bandit_rollout(algo))
    assert prob_of_action_0(algo) > p0 + 0.05


def test_update_is_deterministic_given_the_seed():
    a, b = cartpole_trpo(seed=5), cartpole_trpo(seed=5)
    b.net.load_state_dict(a.net.state_dict())
    batch = collect(cartpole_trpo(seed=9), "CartPole-v1", 2)
    assert a.update(batch) == b.update(batch)
    assert all_equal(params(a), params(b))


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_state_round_trips(kind):
    a, env_id = make(kind, seed=1)
    batch = collect(a, env_id, 2)
    a.update(batch)
    b, _ = make(kind, seed=2)
    b.load_state_dict(a.state_dict())
    assert all_equal(params(a), params(b))
    assert (b.policy_updates, b.rejected_steps, b.env_steps, b.grad_steps) == \
        (a.policy_updates, a.rejected_steps, a.env_steps, a.grad_steps)
    # same numbers from here on, rng (minibatch order) and Adam moments included
    assert a.update(batch) == b.update(batch)
    assert all_equal(params(a), params(b))
    # acting reads the loaded parameters (the numpy kernel shares their memory)
    obs = batch.obs[0]
    np.testing.assert_array_equal(a.act(obs, deterministic=True),
                                  b.act(obs, deterministic=True))


def test_anneal_lr_decays_the_critic_learning_rate():
    algo = cartpole_trpo(total_steps=128, anneal_lr=True)
    batch = collect(algo, "CartPole-v1", 2)
    assert algo.update(batch)["learning_rate"] == pytest.approx(1e-3)
    assert algo.update(batch)["learning_rate"] == pytest.approx(0.5e-3)


def test_bad_constructor_arguments():
    for key, value in [("max_kl", 0.0), ("cg_max_steps", 0), ("cg_damping", -0.1),
                       ("line_search_shrinking_factor", 1.0), ("line_search_max_iter", 0)]:
        with pytest.raises(UserError, match=key):
            cartpole_trpo(**{key: value})
    with pytest.raises(UserError, match="batch_size"):
        cartpole_trpo(batch_size=65)  # rollout is 32 x 2


def test_trainer_logs_the_trpo_tags(tmp_path, caplog):
    from rl_runner.trainer import train

    cfg = compose(["algo=trpo", "env=pendulum", *FAST, "trainer.total_steps=512",
                   "algo.n_steps=128", "env.n_envs=2", "algo.value_epochs=2"])
    with caplog.at_level("INFO", logger="rl_runner"):
        res = train(cfg, tmp_path / "run")
    # the line search's record closes the log: 2 policy steps (512 / (128 x 2)), counts add up
    summary = re.search(r"line search over (\d+) policy steps: accepted at full size (\d+) .*"
                        r"shrunk (\d+) .*rejected (\d+)", caplog.text)
    assert summary, caplog.text
    total, full, shrunk, rejected = map(int, summary.groups())
    assert total == 2 and full + shrunk + rejected == 2
    assert res["status"] == "completed" and res["env_steps"] == 512
    tags = set(read_scalars(tmp_path / "run" / "tb"))
    assert {"losses/surrogate", "losses/kl", "losses/value_loss", "losses/entropy",
            "charts/line_search_steps", "charts/line_search_rejected"} <= tags


def test_resumed_run_gives_the_uninterrupted_numbers(tmp_path):
    """Stop after 4 updates, resume to 8: the curves equal those of one run of 8 (CPU)."""
    from rl_runner.trainer import train

    args = ["algo=trpo", "env=pendulum", *FAST, "algo.n_steps=128", "env.n_envs=2",
            "algo.value_epochs=2", "algo.normalize_obs=true", "algo.normalize_reward=true",
            "trainer.eval_every=512", "seed=3"]
    whole = train(compose([*args, "trainer.total_steps=2048"]), tmp_path / "whole")
    train(compose([*args, "trainer.total_steps=1024"]), tmp_path / "split")
    split = train(compose([*args, "trainer.total_steps=2048"]), tmp_path / "split", resume=True)
    for key in ("env_steps", "grad_steps", "eval_return_mean"):
        assert split[key] == whole[key], key
    a, b = read_scalars(tmp_path / "whole" / "tb"), read_scalars(tmp_path / "split" / "tb")
    for tag in ("losses/surrogate", "losses/kl", "losses/value_loss", "charts/line_search_steps",
                "charts/line_search_reject_rate"):
        assert b[tag] == a[tag], tag


@pytest.mark.slow
def test_trpo_learns_cartpole(tmp_path):
    from rl_runner.trainer import train

    cfg = compose(["algo=trpo", "env=cartpole", "seed=0", "trainer.progress=false",
                   "trainer.total_steps=100000"])
    res = train(cfg, tmp_path / "run")
    assert res["env_steps"] <= 100_000
    assert res["eval_return_mean"] >= 475, res
