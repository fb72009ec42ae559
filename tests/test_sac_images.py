"""SAC on images: the critics' CNN, the detached actor, the target CNN, state; runs on frames."""
from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.sac import SAC
from rl_runner.checkpoint import load_checkpoint
from rl_runner.errors import UserError
from rl_runner.frame_buffer import FrameReplay
from rl_runner.trainer import train
from tests.conftest import FAST, compose
from tests.test_frame_buffer import Streams
from tests.helpers.frame_env import MODULE_ENV_ID, SMALL_CNN

FRAMES = gym.spaces.Box(0, 255, (4, 12, 12), np.uint8)
CNN = dict(cnn_channels=[8, 16], cnn_kernels=[4, 3], cnn_strides=[2, 1], cnn_features=32)


def make_sac(action_space: gym.Space, **kw) -> SAC:
    torch.manual_seed(kw.get("seed", 0))
    args = dict(observation_space=FRAMES, action_space=action_space, n_envs=2, total_steps=1000,
                seed=0, hidden_sizes=[32, 32], batch_size=16, tau=0.1, **CNN)
    return SAC(**{**args, **kw})


def frame_batch(algo: SAC, seed: int = 0, n_batches: int = 1):
    """Minibatches of frame-stack transitions from a FrameReplay."""
    streams = Streams(2, seed=seed, shape=FRAMES.shape)
    buf = FrameReplay(200, FRAMES.shape, algo.buffer_action_dim, 2)
    rng = np.random.default_rng(seed)
    for _ in range(60):
        obs, _, rewards, terminated, nxt = streams.step()
        buf.add(obs, algo.random_actions(2, rng), rewards / 100, terminated, nxt)
    return buf.sample(n_batches, algo.batch_size, rng)


BOX = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
SPACES = [gym.spaces.Discrete(3), BOX]
IDS = ["discrete", "box"]


@pytest.mark.parametrize("space", SPACES, ids=IDS)
def test_an_update_on_frames_trains_the_critics_cnn_and_acts(space):
    algo = make_sac(space)
    assert algo.encoder is not None and algo.feature_dim == 32
    before = algo.encoder.opt.flat.clone()
    batch = frame_batch(algo)
    assert batch.obs.dtype == np.uint8
    metrics = algo.update(batch)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert not torch.equal(algo.encoder.opt.flat, before)  # the critics' loss reached the CNN
    actions = algo.act(batch.obs[0], deterministic=True)
    assert len(actions) == algo.batch_size
    if isinstance(space, gym.spaces.Box):
        assert np.abs(algo.explore(batch.obs[0])).max() <= 1.0


@pytest.mark.parametrize("space", SPACES, ids=IDS)
def test_no_actor_gradient_reaches_the_cnn(space, monkeypatch):
    """The actor's step (in _finish) comes after the CNN's: its backward must leave the CNN's
    gradient as the critics' loss left it."""
    algo = make_sac(space)
    seen = []
    finish = algo._finish

    def spy(actor_loss):
        grad = algo.encoder.opt.grad.clone()
        finish(actor_loss)
        seen.append(torch.equal(grad, algo.encoder.opt.grad))
        seen.append(bool(grad.abs().sum() > 0))

    monkeypatch.setattr(algo, "_finish", spy)
    algo.update(frame_batch(algo, n_batches=2))
    assert seen == [True, True, True, True]


def test_the_target_cnn_is_polyak_averaged_with_the_online_one():
    algo = make_sac(gym.spaces.Discrete(3), tau=0.25)
    target = algo.encoder.target.flat.clone()
    assert torch.equal(target, algo.encoder.opt.flat)  # a copy at the start
    algo.update(frame_batch(algo))
    online = algo.encoder.opt.flat
    assert not torch.equal(online, target)
    torch.testing.assert_close(algo.encoder.target.flat, 0.75 * target + 0.25 * online)
    # the target critics read it: its parameters are views into the averaged flat buffer
    first = next(algo.encoder.target.net.parameters())
    assert first.data_ptr() == algo.encoder.target.flat.data_ptr()


@pytest.mark.parametrize("space", SPACES, ids=IDS)
def test_state_round_trip_continues_identically(space):
    a = make_sac(space)
    for i in range(2):
        a.update(frame_batch(a, seed=i))
    b = make_sac(space, seed=3)
    state = copy.deepcopy(a.state_dict())
    assert {"encoder", "encoder_target", "encoder_opt"} <= set(state)
    assert all(t.device.type == "cpu" for t in state["encoder"].values())
    b.load_state_dict(state)
    batch = frame_batch(a, seed=9)
    assert a.update(batch) == b.update(batch)
    torch.testing.assert_close(a.encoder.opt.flat, b.encoder.opt.flat, rtol=0, atol=0)
    obs = batch.obs[0]
    np.testing.assert_array_equal(a.explore(obs), b.explore(obs))


def test_images_can_go_flat_into_the_mlps():
    algo = make_sac(gym.spaces.Discrete(3), encoder="mlp")
    assert algo.encoder is None and algo.feature_dim == 4 * 12 * 12
    metrics = algo.update(frame_batch(algo))
    assert math.isfinite(metrics["qf_loss"])


def test_cnn_settings_that_do_not_fit_fail_with_one_line():
    with pytest.raises(UserError, match="shrink"):
        make_sac(gym.spaces.Discrete(3), cnn_kernels=[8, 8], cnn_strides=[4, 4])
    with pytest.raises(UserError, match="encoder=cnn needs image"):
        SAC(observation_space=gym.spaces.Box(-1, 1, (3,), np.float32),
            action_space=gym.spaces.Discrete(2), n_envs=1, total_steps=10, encoder="cnn")


# ---- through the trainer ------------------------------------------------------------------------
def frames_cfg(*extra: str):
    return compose(["algo=sac", "env=gym", f"env.id={MODULE_ENV_ID}", "env.n_envs=2",
                    *SMALL_CNN, "algo.hidden_sizes=[32,32]", "algo.batch_size=16",
                    "algo.learning_starts=100", "algo.buffer_size=1000", *FAST,
                    "trainer.total_steps=300", "trainer.eval_every=300",
                    "trainer.torch_threads=1", "trainer.save_replay_buffer=true", *extra])


def test_discrete_sac_trains_on_stacked_frames_and_resumes_with_its_buffer(tmp_path):
    run = tmp_path / "run"
    res = train(frames_cfg(), run)
    assert res["status"] == "completed" and res["env_steps"] == 300
    assert res["grad_steps"] == (300 - 100) // 2 + 1  # an update per 2 env steps from 100 on
    assert math.isfinite(res["eval_return_mean"])
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    buffer = last["replay_buffer"]
    assert buffer["kind"] == "frames" and buffer["frames"].dtype == np.uint8
    assert buffer["frames"].shape == (150, 2, 12, 12)  # one frame per transition
    assert "encoder" in last["algo"]
    # a resume loads the buffer: updates go on at once instead of refilling 100 steps first
    res = train(frames_cfg("trainer.total_steps=400"), run, resume=True)
    assert res["env_steps"] == 400 and res["grad_steps"] == (300 - 100) // 2 + 1 + 50
