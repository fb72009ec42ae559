"""The torch (autograd) path of pg, ppo and trpo takes the numpy path's steps; backend choice.

From the same parameters, RNG and rollout, one update() on each path must give the same
parameters and metrics (up to float32 rounding): the torch losses are the numpy gradients'
functions written out, so any slip in either shows here.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.pg import PolicyGradient
from rl_runner.algos.ppo import PPO
from rl_runner.algos.torch_onpolicy import clip_flat_
from rl_runner.algos.trpo import TRPO, conjugate_gradient
from rl_runner.checkpoint import load_checkpoint, save_checkpoint
from rl_runner.errors import UserError
from tests.algos.helpers import CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS, collect

ALGOS = {"pg": PolicyGradient, "ppo": PPO, "trpo": TRPO}
CASES = {  # (algo, extra hyperparameters): every option of each loss at least once
    "pg": ("pg", dict(value_steps=2, ent_coef=0.01)),
    "ppo_clip": ("ppo", dict(clip_vloss=True, ent_coef=0.01, anneal_clip=True, n_epochs=3,
                             max_grad_norm=0.05)),
    "ppo_kl_penalty": ("ppo", dict(objective="kl_penalty", ent_coef=0.01, n_epochs=3)),
    "ppo_early_stop": ("ppo", dict(kl_early_stop=1e-4, n_epochs=4, lr=3e-3)),
    "ppo_one_minibatch": ("ppo", dict(batch_size=64, n_epochs=3, norm_adv=False)),
    "trpo": ("trpo", dict(ent_coef=0.01, value_epochs=2, max_grad_norm=0.5)),
}


def spaces(kind: str) -> dict:
    if kind == "discrete":
        return dict(observation_space=CARTPOLE_OBS, action_space=gym.spaces.Discrete(2))
    return dict(observation_space=PENDULUM_OBS, action_space=PENDULUM_ACT)


def twins(name: str, kind: str, **kw):
    """The same algorithm on each backend, with equal parameters and RNG."""
    args = {**spaces(kind), "n_envs": 2, "total_steps": 10_000, "seed": 3, "n_steps": 32,
            **({} if name == "pg" else {"batch_size": 16}), **kw}
    torch.manual_seed(0)  # the initial weights: the same case, the same numbers, in any order
    a, b = (ALGOS[name](backend=backend, **args) for backend in ("numpy", "torch"))
    b.net.load_state_dict(a.net.state_dict())
    return a, b


def rollout(algo, kind: str, seed: int = 0):
    return collect(algo, "CartPole-v1" if kind == "discrete" else "Pendulum-v1", 2, seed)


def assert_same_parameters(a, b, rtol=1e-4, atol=1e-5):
    for (name, pa), pb in zip(a.net.named_parameters(), b.net.parameters()):
        np.testing.assert_allclose(pb.detach().numpy(), pa.detach().numpy(), rtol=rtol,
                                   atol=atol, err_msg=name)


def assert_same_metrics(ma: dict, mb: dict):
    assert ma.keys() == mb.keys()
    for key in ma:
        if math.isnan(ma[key]):
            assert math.isnan(mb[key]), key
        else:
            assert mb[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("kind", ["discrete", "box"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_update_takes_the_same_step_on_both_paths(case, kind):
    name, kw = CASES[case]
    a, b = twins(name, kind, **kw)
    assert (a.backend, b.backend, a.kernel is None, b.kernel is None) == \
        ("numpy", "torch", False, True)
    batch = rollout(twins(name, kind, **kw)[0], kind)  # a, b keep their RNG states equal
    before = [p.detach().clone() for p in a.net.parameters()]
    for _ in range(2):  # the second update starts from Adam moments and a moved policy
        ma, mb = a.update(batch), b.update(batch)
        assert_same_metrics(ma, mb)
        # trpo: conjugate gradient on the Fisher amplifies float32 rounding (other initial
        # weights gave differences up to 1.4e-5 in single entries)
        assert_same_parameters(a, b, atol=5e-5 if name == "trpo" else 1e-5)
    assert a.grad_steps == b.grad_steps > 0
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    moved = [not torch.equal(x, y) for x, y in zip(before, a.net.parameters())]
    assert all(moved), "each parameter must move, or the comparison proves little"
    if case == "ppo_early_stop":
        assert a.grad_steps < 2 * 4 * 4  # the stop fired (on both paths alike)


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_trpo_fisher_vector_products_and_gradients_agree(kind):
    a, b = twins("trpo", kind)
    batch = rollout(a, kind)
    pa, _ = a.policy_batch(batch)
    pb, _ = b._torch.policy_batch(batch)
    g_np, fvp_np = a.surrogate_gradient_and_fvp(pa)
    g_t, fvp_t = b._torch.surrogate_gradient_and_fvp(pb)
    # both are vectors over the actor's entries of the flat buffer, in their own orders
    where = {int(f): i for i, f in enumerate(b._torch.flat_idx)}
    to_np = np.array([where[int(f)] for f in a._actor_idx])  # torch vector[to_np]: numpy order
    assert len(to_np) == len(g_np) == len(g_t)
    np.testing.assert_allclose(g_t.numpy()[to_np], g_np, rtol=1e-4, atol=1e-7)
    v = np.random.default_rng(1).normal(size=len(g_np))
    v_t = np.empty_like(v)
    v_t[to_np] = v
    hv_t = fvp_t(torch.from_numpy(v_t)).detach().numpy()[to_np]
    hv = fvp_np(v)
    assert np.abs(hv - b.cg_damping * v).max() > 1e-3  # the Fisher part is not negligible
    np.testing.assert_allclose(hv_t, hv, rtol=1e-4, atol=1e-6)
    # and so the natural-gradient directions conjugate gradient finds
    g_torch_order = np.empty_like(g_np)
    g_torch_order[to_np] = g_np
    x_t = conjugate_gradient(fvp_t, torch.from_numpy(g_torch_order), 10).detach().numpy()
    x = conjugate_gradient(fvp_np, g_np, 10)
    # CG amplifies float32 rounding in its small entries: compared at the vector's own scale
    np.testing.assert_allclose(x_t[to_np], x, rtol=1e-3, atol=1e-3 * np.abs(x).max())


def test_auto_backend_is_numpy_for_mlps_on_the_cpu():
    algo = PPO(**spaces("discrete"), n_envs=1, total_steps=100, n_steps=8, batch_size=8)
    assert algo.backend == "numpy" and algo.encoder == "mlp"


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_a_torch_checkpoint_loads_into_the_numpy_path(name, tmp_path):
    """Same network and optimizer layout: a run can change backend (or device) on resume."""
    a, b = twins(name, "box")
    batch = rollout(a, "box")
    b.update(batch)
    save_checkpoint(tmp_path / "last.pt", {"algo": b.state_dict()})
    a.load_state_dict(load_checkpoint(tmp_path / "last.pt")["algo"])
    assert_same_parameters(a, b, rtol=0, atol=0)
    assert_same_metrics(a.update(batch), b.update(batch))
    assert_same_parameters(a, b)


def test_backend_numpy_is_refused_off_the_cpu():
    with pytest.raises(UserError, match=r"algo.backend=numpy runs MLPs on the CPU only, not "
                                        r"device meta; allowed here: auto, torch"):
        PPO(**spaces("discrete"), n_envs=1, total_steps=100, n_steps=8, batch_size=8,
            backend="numpy", device=torch.device("meta"))


@pytest.mark.parametrize("scale", [1e-3, 10.0])  # gradient norms ~0.1 (kept) and ~960 (cut)
def test_the_device_side_gradient_clip_matches_torchs(scale):
    """The GPU's clip (no read-back of the norm) scales as clip_grad_norm_ does."""
    algo = PPO(**spaces("discrete"), n_envs=1, total_steps=100, n_steps=8, batch_size=8)
    grad = algo.optimizer.grad
    grad.copy_(torch.randn(grad.shape, generator=torch.Generator().manual_seed(0)) * scale)
    reference = torch.nn.Parameter(torch.zeros_like(grad))
    reference.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_([reference], 0.5)
    clip_flat_(grad, 0.5)
    torch.testing.assert_close(grad, reference.grad)
    assert float(grad.norm()) == pytest.approx(min(0.5, 96 * scale), rel=0.05)


def test_a_moved_parallel_mlp_computes_with_its_moved_parameters():
    """A move that makes new Parameter objects (as torch may for a device) must not leave the
    forward on the old ones."""
    from rl_runner.nets import ParallelMLP

    mlp = ParallelMLP(3, [8], 2, k=2)
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        old = list(mlp.parameters())
        mlp.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    assert all(a is not b for a, b in zip(old, mlp.parameters()))
    assert mlp(torch.zeros(4, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_behavioural_cloning_takes_the_same_steps_on_both_paths(kind):
    """gail's bc_init_steps: OnPolicyAlgorithm.clone on each path."""
    a, b = twins("ppo", kind)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(40, 4 if kind == "discrete" else 3)).astype(np.float32)
    actions = rng.integers(0, 2, 40) if kind == "discrete" else \
        rng.uniform(-2, 2, (40, 1)).astype(np.float32)
    loss_a = a.clone(obs, actions, 5, 16, np.random.default_rng(1))
    loss_b = b.clone(obs, actions, 5, 16, np.random.default_rng(1))
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert a.grad_steps == b.grad_steps == 0  # the learner's own steps only
    assert_same_parameters(a, b)
