"""pg, ppo and trpo on uint8 images: a CNN on the torch path, uint8 rollouts, the refusals."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos import base
from rl_runner.algos.pg import PolicyGradient
from rl_runner.algos.ppo import PPO
from rl_runner.algos.trpo import TRPO
from rl_runner.checkpoint import load_checkpoint, save_checkpoint
from rl_runner.errors import UserError
from rl_runner.nets import CnnActorCritic
from rl_runner.rollout import RolloutCollector
from rl_runner.threads import choose_threads, set_threads
from rl_runner.trainer import train
from tests.conftest import FAST, compose, read_results
from tests.helpers.frame_env import ENV_ID, SMALL_CNN, make_frame_vec_env

FRAMES = gym.spaces.Box(0, 255, (4, 12, 12), np.uint8)
CNN = dict(cnn_channels=[8, 16], cnn_kernels=[4, 3], cnn_strides=[2, 1], cnn_features=32)


def image_algo(cls=PPO, **kw):
    """The algorithm with the same initial weights every time (the trainer seeds torch, these
    tests build algorithms themselves: unseeded, a learning test passed or failed by chance)."""
    torch.manual_seed(0)
    args = dict(observation_space=FRAMES, action_space=gym.spaces.Discrete(3), n_envs=4,
                total_steps=10_000, seed=0, n_steps=32, precision="fp32", **CNN)
    if cls is not PolicyGradient:
        args["batch_size"] = 32
    return cls(**{**args, **kw})


@pytest.fixture(scope="module")
def envs():
    envs = make_frame_vec_env(4)
    yield envs
    envs.close()


@pytest.mark.parametrize("cls", [PolicyGradient, PPO, TRPO])
def test_images_take_the_cnn_on_the_torch_path(cls, envs):
    algo = image_algo(cls)
    assert (algo.encoder, algo.backend) == ("cnn", "torch")
    assert isinstance(algo.net, CnnActorCritic)
    assert (algo.net.critic_encoder is None) == (cls is not TRPO)  # trpo: one CNN each
    batch, _ = RolloutCollector(envs, algo.n_steps, 0).collect(algo)
    assert batch.obs.dtype == np.uint8 and batch.obs.shape == (32, 4, 4, 12, 12)
    before = [p.detach().clone() for p in algo.net.parameters()]
    metrics = algo.update(batch)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    moved = [not torch.equal(a, b) for a, b in zip(before, algo.net.parameters())]
    assert all(moved)



@pytest.mark.parametrize("shape", [(4, 12, 12), (12, 12, 3)])
def test_frames_reach_the_cnn_in_its_layout_with_the_same_outputs(shape):
    """Channels-first frames go to the device with channels_last strides (once per rollout,
    not per minibatch in the CNN); gathered minibatch rows keep them; the outputs are those of
    the frames as they came, to the bit. Channels-last frames stay as they are (the CNN
    permutes them)."""
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    algo = image_algo(observation_space=space)
    frames = np.random.default_rng(0).integers(0, 256, (16, *shape), dtype=np.uint8)
    x = algo.obs_tensor(frames)
    assert x.shape == (16, *shape) and torch.equal(x, torch.from_numpy(frames))
    chw = shape[0] == 4
    assert x.is_contiguous(memory_format=torch.channels_last) == chw
    assert x.is_contiguous() != chw
    assert x[torch.tensor([3, 1, 7])].is_contiguous(memory_format=torch.channels_last) == chw
    with torch.no_grad():
        got, want = algo.net(x), algo.net(torch.from_numpy(frames))
    assert all(torch.equal(a, b) for a, b in zip(got, want))

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ppo_with_a_cnn_learns_to_name_the_bar(envs, precision):
    """The frame env pays 1 where the action names the bright bar's column: chance is 1/3.
    One torch thread, whatever earlier tests left: a convolution's last bits depend on the
    thread count, and 25 updates carry them far."""
    algo = image_algo(lr=1e-3, n_epochs=4, precision=precision)
    collector = RolloutCollector(envs, algo.n_steps, 0)
    paid = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(25):
            batch, _ = collector.collect(algo)
            paid.append(float(batch.rewards.mean()))
            algo.update(batch)
    finally:
        torch.set_num_threads(threads)
    assert np.mean(paid[:3]) < 0.45
    assert np.mean(paid[-5:]) > 0.55, paid


def test_trpo_value_fit_leaves_the_policy_alone(envs):
    """Its critic has its own CNN: fitting the value must not move the trust-region policy."""
    algo = image_algo(TRPO, value_epochs=3)
    batch, _ = RolloutCollector(envs, algo.n_steps, 0).collect(algo)
    pb, ret = algo._torch.policy_batch(batch)
    with torch.no_grad():
        before_out, before_v = algo.net(pb.obs)
    algo._torch.fit_value(pb.obs, ret)
    with torch.no_grad():
        after_out, after_v = algo.net(pb.obs)
    assert torch.equal(before_out, after_out)
    assert not torch.equal(before_v, after_v)


def test_trpo_steps_the_cnn_weights_it_differentiates():
    """The line search writes theta_old + step into the flat buffer at flat_idx; the step comes
    in the order of the concatenated gradients (grad_idx). The CNN's channels_last weights are
    stored in another order than their elements': the two must still name the same entries."""
    algo = image_algo(TRPO)
    assert not algo.net.encoder.convs[0].weight.is_contiguous()  # channels_last in the buffer
    t = algo._torch
    logical = torch.cat([p.detach().reshape(-1) for p in t.actor_params])
    assert torch.equal(algo.optimizer.flat[t.flat_idx], logical[t.grad_idx])


def test_a_cnn_checkpoint_round_trips(envs, tmp_path):
    a, b = image_algo(seed=1), image_algo(seed=2)
    batch, _ = RolloutCollector(envs, a.n_steps, 0).collect(a)
    a.update(batch)
    save_checkpoint(tmp_path / "last.pt", {"algo": a.state_dict()})
    b.load_state_dict(load_checkpoint(tmp_path / "last.pt")["algo"])
    obs = batch.obs[0]
    np.testing.assert_array_equal(a.act(obs, deterministic=True), b.act(obs, deterministic=True))
    np.testing.assert_array_equal(a.value(obs), b.value(obs))
    assert a.update(batch) == b.update(batch)  # Adam's moments and the RNG came along too


@pytest.mark.parametrize("kw, message", [
    (dict(backend="numpy"), "algo.backend=numpy runs MLPs on the CPU only, not a CNN encoder "
                            "(image observations); allowed here: auto, torch"),
    (dict(normalize_obs=True), "algo.normalize_obs=true is for vector observations; the CNN "
                               "scales the env's uint8 images to [0, 1] itself; allowed with "
                               "images: false"),
])
def test_what_images_refuse(kw, message):
    with pytest.raises(UserError) as e:
        image_algo(**kw)
    assert str(e.value) == message


def test_flattened_pixels_still_run_the_numpy_mlp(envs):
    algo = image_algo(encoder="mlp", hidden_sizes=[16])
    assert (algo.encoder, algo.backend) == ("mlp", "numpy")
    batch, _ = RolloutCollector(envs, algo.n_steps, 0).collect(algo)
    assert batch.obs.dtype == np.float32  # what the MLP takes
    assert np.isfinite(algo.update(batch)["policy_loss"])


def test_rl_run_refuses_the_numpy_backend_for_images_in_one_line(refused_in_process):
    line = refused_in_process(["algo=ppo", "env=gym", f"env.id={ENV_ID}", "algo.backend=numpy",
                               *SMALL_CNN])
    assert "algo.backend=numpy runs MLPs on the CPU only, not a CNN encoder" in line


def test_an_image_run_trains_evaluates_and_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    train(compose(["algo=ppo", "env=gym", f"env.id={ENV_ID}", "env.n_envs=4", *SMALL_CNN,
                   *FAST, "algo.n_steps=16", "algo.batch_size=32", "algo.n_epochs=2",
                   "trainer.total_steps=256", "trainer.eval_every=128"]), run_dir)
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["env_steps"] == 256
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["config"]["algo"]["backend"] == "auto"
    assert state["algo"]["net"]["encoder.linear.weight"].shape == (32, 16 * 3 * 3)  # 12 -> 5 -> 3


@pytest.mark.parametrize("cls", [PolicyGradient, PPO, TRPO])
def test_a_cnn_asks_for_every_core_under_the_tuner_and_an_mlp_for_one(cls):
    """Measured (OnPolicyAlgorithm.preferred_threads): two idle cores ran ppo breakout 1.27x
    faster than one; under load the ThreadTuner goes back to one thread."""
    algo = image_algo(cls)
    assert algo.preferred_threads(4) == 4
    threads, tuner = choose_threads("auto", 2, algo)
    assert threads == 2 and tuner is not None
    assert image_algo(cls, encoder="mlp").preferred_threads(4) == 1
    set_threads(1)


def test_bf16_runs_the_cnn_in_bfloat16():
    """algo.precision=bf16: the CNN's layers under autocast (outputs near float32's, not
    equal, and float32 themselves), parameters float32 (the learning test above runs it)."""
    fp32, bf16 = image_algo(), image_algo(precision="bf16")
    bf16.net.load_state_dict(fp32.net.state_dict())
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 4, 12, 12),
                                                                 dtype=np.uint8))
    with torch.no_grad():
        (a, va), (b, vb) = fp32.net(frames), bf16.net(frames)
    assert b.dtype == vb.dtype == torch.float32
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05, rtol=0.05)
    assert not torch.equal(va, vb) and torch.allclose(va, vb, atol=0.05, rtol=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.net.parameters())


@pytest.mark.parametrize("cls", [PolicyGradient, PPO])
def test_bf16_acting_follows_every_update_and_load(cls, envs):
    """The rollout acts through infer's bfloat16 copy of the net: after an update, and after
    a checkpoint's weights are loaded, it gives what the net itself gives now."""
    algo = image_algo(cls, precision="bf16")
    collector = RolloutCollector(envs, algo.n_steps, 0)
    frames = np.random.default_rng(1).integers(0, 256, (8, 4, 12, 12), dtype=np.uint8)

    def agrees() -> bool:
        with torch.inference_mode():
            out, v = algo.net(algo.obs_tensor(frames))
        got_out, got_v = algo.outputs(frames)
        return np.array_equal(got_out, out.numpy()) and np.array_equal(got_v, v.numpy())

    start = image_algo(cls, precision="bf16").state_dict()
    other = {**start, "net": {k: v * 1.5 for k, v in start["net"].items()}}
    for _ in range(2):
        algo.update(collector.collect(algo)[0])
        assert agrees()
    for state in (start, other):  # two loads at the same optimizer step
        algo.load_state_dict(state)
        assert agrees()


@pytest.mark.parametrize("units, cls, space, device, expect", [
    ("AVX512-BF16", PPO, FRAMES, "cpu", True),
    ("AMX-BF16", PolicyGradient, FRAMES, "cpu", True),
    (None, PPO, FRAMES, "cpu", False),  # a CPU without bfloat16 units
    ("AVX512-BF16", TRPO, FRAMES, "cpu", False),  # its Fisher products need float32
    ("AVX512-BF16", PPO, gym.spaces.Box(-1, 1, (4,), np.float32), "cpu", False),  # an MLP
    ("AVX512-BF16", PPO, FRAMES, "cuda", False)])  # GPUs: not measured
def test_auto_precision_is_bf16_for_a_cnn_on_a_cpu_with_bfloat16_units(
        monkeypatch, units, cls, space, device, expect):
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: units)
    encoder = "cnn" if space is FRAMES else "mlp"
    assert base.resolve_precision("auto", encoder, torch.device(device), cls.bf16_ok,
                                  cls.name) == ("bf16" if expect else "fp32")
    if device == "cpu":
        algo = image_algo(cls, observation_space=space, precision="auto")
        assert algo.precision == ("bf16" if expect else "fp32")
        assert getattr(algo.net, "bf16", False) == expect


def test_cpu_bf16_units_reads_torchs_cpu_capabilities(monkeypatch):
    for caps, units in (({"amx_bf16": True, "avx512_bf16": True}, "AMX-BF16"),
                        ({"amx_bf16": False, "avx512_bf16": True}, "AVX512-BF16"),
                        ({"avx2": True}, None)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert base.cpu_bf16_units() == units


@pytest.mark.parametrize("cls, space, says", [
    (TRPO, FRAMES, "natural-gradient"),
    (PPO, gym.spaces.Box(-1, 1, (4,), np.float32), "MLP takes vectors")])
def test_bf16_is_refused_where_it_does_not_apply(cls, space, says):
    with pytest.raises(UserError, match=f"algo.precision=bf16.*{says}.*allowed.*fp32"):
        image_algo(cls, observation_space=space, precision="bf16")
