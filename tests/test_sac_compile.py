"""algo.compile for SAC: the plain-autograd step (sac_compiled) against the hand-written one,
compiled (aot_eager: no C++ build) against uncompiled, checkpoints, refusals; a CLI run with
the real inductor backend (slow: its C++ build takes tens of seconds here)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos import sac_compiled
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.algos.helpers import CARTPOLE_OBS
from tests.algos.test_sac import make_sac, random_batch
from tests.conftest import FAST, compose

BOX = gym.spaces.Box(-2, 2, (2,), np.float32)


def learner(kind: str, **kw):
    if kind == "box":
        return make_sac(BOX, lr=3e-3, **kw)
    return make_sac(gym.spaces.Discrete(3), CARTPOLE_OBS, lr=3e-3, **kw)


def params(algo) -> dict[str, torch.Tensor]:
    """Everything an update changes: networks, target, temperature, Adam moments and counts."""
    out = {"actor": algo.actor_opt.flat, "critic": algo.critics.opt.flat,
           "critic_target": algo.critics.target.flat, "log_alpha": algo.log_alpha.detach()}
    for name, opt in (("actor", algo.actor_opt), ("critic", algo.critics.opt),
                      ("alpha", algo.alpha_opt)):
        out[f"{name}_exp_avg"], out[f"{name}_exp_avg_sq"] = opt.exp_avg, opt.exp_avg_sq
        out[f"{name}_steps"] = torch.tensor(float(opt.steps))
    return {k: v.clone() for k, v in out.items()}


def run(algo, n_updates: int, gradient_steps: int = 1) -> list[dict]:
    return [algo.update(random_batch(algo, gradient_steps, seed=i)) for i in range(n_updates)]


def assert_same(a, b, metrics_a, metrics_b, rtol, atol):
    pa, pb = params(a), params(b)
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=rtol, atol=atol, msg=lambda m: f"{key}: {m}")
    assert a.grad_steps == b.grad_steps
    torch.testing.assert_close(a.gen.get_state(), b.gen.get_state(), rtol=0, atol=0)
    for ma, mb in zip(metrics_a, metrics_b):
        assert set(ma) == set(mb)
        for key in ma:
            assert ma[key] == pytest.approx(mb[key], rel=rtol, abs=atol), key


@pytest.mark.parametrize("kind", ["box", "discrete"])
@pytest.mark.parametrize("settings", [{}, {"actor_lr": 1e-2, "backup_entropy": False,
                                           "gradient_steps": 2},
                                      {"ent_coef": 0.1, "anneal_lr": True}],
                         ids=["defaults", "actor_lr-no_backup-2_steps", "fixed_alpha-anneal"])
def test_plain_autograd_step_matches_the_hand_written_one(kind, settings, monkeypatch):
    monkeypatch.setattr(sac_compiled, "BACKEND", None)  # the step uncompiled
    hand, plain = learner(kind, **settings), learner(kind, compile=True, **settings)
    g = settings.get("gradient_steps", 1)
    got, expected = run(plain, 3, g), run(hand, 3, g)
    assert plain.grad_steps == 3 * g
    assert_same(plain, hand, got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_compiled_step_matches_the_uncompiled_one(kind, monkeypatch):
    monkeypatch.setattr(sac_compiled, "BACKEND", None)
    plain = learner(kind, compile=True)
    expected = run(plain, 3)
    monkeypatch.setattr(sac_compiled, "BACKEND", "aot_eager")
    compiled = learner(kind, compile=True)
    got = run(compiled, 3)
    assert compiled.compiled_step.compiled and not plain.compiled_step.compiled
    assert_same(compiled, plain, got, expected, rtol=1e-5, atol=1e-6)


def test_checkpoints_keep_one_layout_and_move_between_the_two_steps(monkeypatch):
    monkeypatch.setattr(sac_compiled, "BACKEND", None)
    hand, plain = learner("box"), learner("box", compile=True)
    run(hand, 2)
    run(plain, 2)
    a, b = hand.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    for key in ("actor", "critic"):
        assert {k: v.shape for k, v in a[key].items()} == {k: v.shape for k, v in b[key].items()}
    # a checkpoint of the hand-written step continues under compile=true: its step counts too
    resumed = learner("box", compile=True)
    resumed.load_state_dict(a)
    got, expected = run(resumed, 1), run(hand, 1)
    assert_same(resumed, hand, got, expected, rtol=1e-4, atol=1e-5)


def test_images_are_refused_with_one_line():
    frames = gym.spaces.Box(0, 255, (4, 12, 12), np.uint8)
    with pytest.raises(UserError, match="algo.compile=true") as err:
        make_sac(gym.spaces.Discrete(3), frames, compile=True, cnn_channels=[4],
                 cnn_kernels=[4], cnn_strides=[4], cnn_features=8)
    assert "\n" not in str(err.value)


def test_the_key_is_in_the_config_and_off_by_default():
    assert compose(["algo=sac"]).algo.compile is False


@pytest.mark.slow
def test_cli_run_with_inductor(tmp_path):
    cfg = compose(["algo=sac", "env=pendulum", "env.n_envs=1", "algo.hidden_sizes=[32,32]",
                   "algo.batch_size=32", "algo.learning_starts=64", "algo.compile=true", *FAST,
                   "trainer.total_steps=200", "trainer.eval_every=200"])
    res = train(cfg, tmp_path / "run")
    assert res["status"] == "completed" and res["grad_steps"] == 200 - 64 + 1
    assert np.isfinite(res["eval_return_mean"])
