"""algo.precision for td3 and ddpg: the hidden-to-hidden products of the update in bfloat16
(mlp_forward / mlp_backward with `lowp`), what auto picks, refusals, and that such runs resume
and act in float32. Their learning: test_td3's slow tests, bf16 by auto on a CPU with the units."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_runner.algos import base
from rl_runner.algos.mlp_grad import mlp_backward
from rl_runner.algos.td3 import DDPG, TD3
from rl_runner.algos.twin_critic import cached_layers, mlp_forward
from rl_runner.errors import UserError
from rl_runner.nets import ParallelMLP
from tests.algos.test_td3 import BOX2, RESUME_ARGS, TAGS, Reference, make, random_batch
from tests.conftest import NUMBERS, read_results, read_scalars, run_cli
from tests.test_resume import interrupt_when_checkpointed

BF16 = torch.bfloat16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def forward_backward(net: ParallelMLP, x: torch.Tensor, g: torch.Tensor, lowp,
                     backward_lowp="same"):
    """mlp_forward's output, mlp_backward's weight, bias and input gradients; the backward in
    `backward_lowp` where given (from the forward's hidden layers, as they are)."""
    layers, hidden = cached_layers(net), []
    grads = [(torch.empty_like(w), torch.empty_like(b)) for w, b in layers]
    with torch.no_grad():
        out = mlp_forward(layers, net.act, x, hidden, lowp)
        g_in = mlp_backward(layers, net.activation == "relu", x, hidden, g, grads=grads,
                            input_from=2, lowp=lowp if backward_lowp == "same" else backward_lowp)
    return [out, g_in, *[t for pair in grads for t in pair]]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bf16_products_agree_with_float32_to_bfloat16s_precision(activation):
    """The forward, and the backward through the same hidden layers, within bfloat16's rounding
    of float32's (8 bits of mantissa: relative errors of a few 1e-3), and not float32's bits:
    the products did run in bfloat16. (Through a bf16 forward's own hidden layers ReLU's
    gradients differ by more, ~5e-2: units near 0 switch on or off.)"""
    torch.manual_seed(0)
    net = ParallelMLP(6, [64, 48, 32], 1, k=2, activation=activation)
    x, g = torch.randn(128, 6), torch.randn(2, 128, 1)
    want = forward_backward(net, x, g, None)
    out = forward_backward(net, x, g, BF16)[0]
    assert out.dtype == torch.float32 and 0 < rel_err(out, want[0]) < 1e-2
    got = forward_backward(net, x, g, None, backward_lowp=BF16)
    for i, (a, b) in enumerate(zip(got[1:-3], want[1:-3])):  # input, hidden layers' gradients
        assert a.dtype == torch.float32 and 0 < rel_err(a, b) < 1e-2, i
    # the last hidden layer's bias gradient (a sum of float32 g) and the output layer's (float32
    # products): float32's bits
    for a, b in zip(got[-3:], want[-3:]):
        assert torch.equal(a, b)


def test_an_mlp_without_hidden_to_hidden_products_keeps_float32s_bits():
    """The first layer (observations in) and the output layer stay float32: with one hidden
    layer, bf16 changes nothing."""
    torch.manual_seed(0)
    net = ParallelMLP(6, [64], 1, k=2, activation="relu")
    x, g = torch.randn(128, 6), torch.randn(2, 128, 1)
    for got, want in zip(forward_backward(net, x, g, BF16), forward_backward(net, x, g, None)):
        assert torch.equal(got, want)


def layer_grads(net) -> list[torch.Tensor]:
    """A ParallelMLP's autograd gradients, layer by layer: weight, bias, weight, ..."""
    return [t.grad.clone() for pair in zip(net.weights, net.biases) for t in pair]


@pytest.mark.parametrize("cls", [TD3, DDPG])
@pytest.mark.parametrize("activation, critic_limit, actor_limit", [
    ("tanh", 3e-2, 1.5e-1), ("relu", 4e-1, 4e-1)])
def test_bf16_gradients_follow_float32_autograd_and_acting_stays_float32(
        cls, activation, critic_limit, actor_limit):
    """One update (a critic step, then the actor's) of a bf16 learner: the gradients it wrote
    against plain float32 autograd's (test_td3's Reference) from the same weights, as relative
    errors. Over seeds 0-29 the worst were, critic / actor: tanh 0.012 / 0.070, relu 0.22 / 0.12
    (the actor's follows a critic step that bfloat16 moved; ReLU units near 0 switch); a float32
    learner's are ~1e-7, a wrong sign, scale, layout or activation gradient is >= ~1. The
    hidden-to-hidden layers' gradients are not float32's bits; acting reads the float32
    parameters."""
    kw = dict(lr=3e-3, hidden_sizes=[64, 64], activation=activation,
              **({"policy_delay": 1} if cls is TD3 else {}))
    algo, exact = make(cls, BOX2, precision="bf16", **kw), make(cls, BOX2, precision="fp32", **kw)
    assert (algo.precision, exact.precision) == ("bf16", "fp32")
    ref, critic_grads = Reference(algo), {}
    critic_step = ref.critic_opt.step

    def recording_step(*args, **kwargs):  # the actor's loss adds to the critic's .grad later
        critic_grads["ref"] = layer_grads(ref.critic)
        return critic_step(*args, **kwargs)

    ref.critic_opt.step = recording_step
    batch = random_batch(algo, 1, seed=0)
    ref.update(batch)
    algo.update(batch)
    exact.update(batch)
    for mine, fp32, want, limit in (
            (algo.critic_grads, exact.critic_grads, critic_grads["ref"], critic_limit),
            (algo.actor_grads, exact.actor_grads, layer_grads(ref.actor), actor_limit)):
        mine, fp32 = [t for pair in mine for t in pair], [t for pair in fp32 for t in pair]
        for a, b in zip(mine, want):
            assert a.dtype == torch.float32 and rel_err(a, b) < limit
        assert not torch.equal(mine[2], fp32[2])  # the hidden-to-hidden layer's weight gradient
    obs = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        want = torch.tanh(algo.actor(torch.from_numpy(obs))[0]).numpy()
    np.testing.assert_allclose(algo.mode(obs), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("units, hidden, batch, device, want", [
    ("AVX512-BF16", [400, 300], 256, "cpu", "bf16"),
    ("AMX-BF16", [256, 256], 256, "cpu", "bf16"),  # 2^24 multiply-adds: the threshold
    ("AVX512-BF16", [256, 256], 128, "cpu", "fp32"),
    ("AVX512-BF16", [64, 64], 256, "cpu", "fp32"),
    ("AVX512-BF16", [4096], 256, "cpu", "fp32"),  # no hidden-to-hidden product
    (None, [400, 300], 256, "cpu", "fp32"),
    ("AVX512-BF16", [400, 300], 256, "cuda", "fp32")])
def test_auto_takes_bf16_for_large_products_on_a_cpu_with_bfloat16_units(
        monkeypatch, units, hidden, batch, device, want):
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: units)
    macs = batch * max((a * b for a, b in zip(hidden, hidden[1:])), default=0)
    assert base.resolve_update_precision("auto", torch.device(device), macs, "td3") == want
    for explicit in ("fp32", "bf16") if macs else ("fp32",):  # as asked, where it applies
        assert base.resolve_update_precision(explicit, torch.device(device), macs,
                                             "td3") == explicit
    if device == "cpu":
        assert make(hidden_sizes=hidden, batch_size=batch).precision == want


def test_bf16_without_a_hidden_to_hidden_product_is_refused_and_without_units_warned(
        monkeypatch, caplog):
    with pytest.raises(UserError, match="one hidden layer.*allowed with it: auto, fp32"):
        make(hidden_sizes=[64], precision="bf16")
    assert make(hidden_sizes=[64]).precision == "fp32"  # auto
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: None)
    with caplog.at_level("WARNING", logger=base.__name__):
        assert make(precision="bf16").precision == "bf16"
    assert "without bfloat16 units" in caplog.text
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: "AMX-BF16")
    caplog.clear()
    with caplog.at_level("WARNING", logger=base.__name__):
        make(precision="bf16")
    assert "without bfloat16 units" not in caplog.text


def test_a_precision_outside_the_allowed_ones_is_one_line_and_exit_2(tmp_path):
    r = run_cli(["algo=td3", "env=pendulum", "algo.precision=fp16"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "precision" in lines[0] and "bf16" in lines[0], r.stderr
    assert not list(tmp_path.glob("outputs/**/results.json"))


def test_a_bf16_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path):
    """test_td3's resume check with algo.precision=bf16: bfloat16 products are deterministic on
    the same CPU and thread count, so the resumed run is the uninterrupted one."""
    args = [*RESUME_ARGS, "algo.precision=bf16"]
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    assert run_cli([*args, f"hydra.run.dir={a_dir}"], tmp_path).returncode == 0
    stopped = interrupt_when_checkpointed(args, b_dir, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    resumed = run_cli([f"resume={b_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ra, rb = read_results(a_dir), read_results(b_dir)
    assert {k: rb[k] for k in NUMBERS} == {k: ra[k] for k in NUMBERS}
    sa, sb = read_scalars(a_dir / "tb"), read_scalars(b_dir / "tb")
    for tag in (*sorted(TAGS), "eval/return_mean"):
        assert sb[tag] == sa[tag], tag
