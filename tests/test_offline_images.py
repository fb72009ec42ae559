"""bc, cql (Discrete) and gail on uint8 image observations: datasets that keep uint8, a CNN in
each network, runs through rl-run, and checkpoints that round-trip on the CPU."""
from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.bc import BC
from rl_runner.algos.build import build_algo
from rl_runner.batches import OfflineBatch
from rl_runner.checkpoint import decode, encode, load_checkpoint
from rl_runner.datasets import Dataset, check_matches, load_dataset, save_dataset
from rl_runner.encoders import NatureCNN
from rl_runner.errors import UserError
from rl_runner.offline import OfflineFeeder
from tests.conftest import FAST, REPO, compose, read_results, run_cli
from tests.helpers.offline_image_env import (ENV_ID, MODULE_ENV_ID, SHAPE, SMALL_CNN,
                                             image_rows)

IMAGES = gym.spaces.Box(0, 255, SHAPE, np.uint8)
CNN_KWARGS = dict(cnn_channels=[4, 8], cnn_kernels=[3, 3], cnn_strides=[1, 1], cnn_features=16)


def image_dataset(n: int = 60, env_id: str = ENV_ID, continuous: bool = False) -> Dataset:
    return Dataset(**image_rows(n, continuous), metadata={"env_id": env_id})


def through_a_file(state: dict) -> dict:
    """The state as a checkpoint gives it back: saved, then loaded without pickle."""
    buf = io.BytesIO()
    torch.save(encode(state), buf)
    buf.seek(0)
    return decode(torch.load(buf, weights_only=True))


def cpu_tensors(state) -> list[torch.Tensor]:
    """Every tensor in a state dict (nested dicts and lists)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in cpu_tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in cpu_tensors(v)]
    return []


# ---- datasets -----------------------------------------------------------------------------------
def test_a_uint8_image_dataset_round_trips_as_uint8(tmp_path):
    data = image_dataset()
    path = tmp_path / "images.npz"
    save_dataset(path, data)
    back = load_dataset(path)
    assert back.observations.dtype == np.uint8 == back.next_observations.dtype
    np.testing.assert_array_equal(back.observations, data.observations)
    np.testing.assert_array_equal(back.next_observations, data.next_observations)
    # a quarter of float32's bytes, before compression (random pixels barely compress)
    assert path.stat().st_size < 2 * data.observations.size * 1.2
    env = gym.make(ENV_ID)
    check_matches(back, path, ENV_ID, env.observation_space, env.action_space)


def test_an_image_dataset_that_does_not_fit_is_one_line(tmp_path):
    env = gym.make(ENV_ID)
    floats = image_dataset()
    floats.observations = floats.observations.astype(np.float32)
    floats.next_observations = floats.next_observations.astype(np.float32)
    save_dataset(tmp_path / "floats.npz", floats)
    with pytest.raises(UserError, match="observations are float32, but .* gives uint8 images; "
                                        "collect the dataset again") as err:
        check_matches(load_dataset(tmp_path / "floats.npz"), tmp_path / "floats.npz", ENV_ID,
                      env.observation_space, env.action_space)
    assert "\n" not in str(err.value)
    vector = gym.spaces.Box(-1, 1, (4, 12, 12), np.float32)  # uint8 rows on a float env
    with pytest.raises(UserError, match="observations are uint8, but .* gives float32"):
        check_matches(image_dataset(), tmp_path / "x.npz", ENV_ID, vector, env.action_space)
    mixed = image_dataset()
    mixed.next_observations = mixed.next_observations.astype(np.float32)
    with pytest.raises(UserError, match="observations are uint8 but next_observations are "
                                        "float32"):
        save_dataset(tmp_path / "mixed.npz", mixed)
    odd = image_dataset()
    odd.observations = odd.next_observations = odd.observations.astype(np.int64)
    with pytest.raises(UserError, match="observations are int64; allowed: float32"):
        save_dataset(tmp_path / "odd.npz", odd)
    assert not (tmp_path / "mixed.npz").exists() and not (tmp_path / "odd.npz").exists()


def test_an_offline_batch_of_images_stays_uint8():
    bc = make_bc()
    feeder = OfflineFeeder(image_dataset(), bc, seed=0)
    batch = feeder.collect(bc)[0]
    assert batch.obs.dtype == np.uint8 and batch.next_obs.dtype == np.uint8
    assert batch.obs.shape == (bc.batch_size, *SHAPE)


# ---- bc -----------------------------------------------------------------------------------------
def make_bc(action_space: gym.Space = gym.spaces.Discrete(3), **kw) -> BC:
    torch.manual_seed(0)
    args = dict(observation_space=IMAGES, action_space=action_space, n_envs=1,
                total_steps=100, seed=0, batch_size=16, hidden_sizes=[16], **CNN_KWARGS)
    return BC(**{**args, **kw})


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3),
                                          gym.spaces.Box(-1, 1, (2,), np.float32)],
                         ids=["discrete", "box"])
def test_bc_on_images_has_a_cnn_learns_and_its_state_round_trips(action_space):
    bc = make_bc(action_space)
    assert isinstance(bc.net.cnn, NatureCNN) and bc.image
    data = image_dataset(continuous=isinstance(action_space, gym.spaces.Box))
    feeder = OfflineFeeder(data, bc, seed=0)
    bc.fit_dataset(feeder.train)
    batch = feeder.collect(bc)[0]
    losses = [bc.update(batch)["bc_loss"] for _ in range(30)]
    assert losses[-1] < losses[0]  # one batch, fitted: the CNN's gradient reaches the loss
    val = bc.validate(feeder.validation)
    assert "val_loss" in val
    state = bc.state_dict()
    assert all(t.device.type == "cpu" for t in cpu_tensors(state))
    other = make_bc(action_space, seed=3)
    other.load_state_dict(through_a_file(state))
    obs = data.observations[:5]
    np.testing.assert_array_equal(other.act(obs, deterministic=True),
                                  bc.act(obs, deterministic=True))
    assert other.update(batch) == bc.update(batch)


def test_bc_encoder_mlp_flattens_images_and_cnn_on_vectors_is_one_line():
    bc = make_bc(encoder="mlp")
    assert not bc.image and not hasattr(bc.net, "cnn")
    bc.fit_dataset(image_dataset())  # uint8 rows standardised as floats
    assert bc.act(image_dataset().observations[:2]).shape == (2,)
    cfg = compose(["algo=bc", "env=cartpole", "algo.encoder=cnn"])
    env = gym.make("CartPole-v1")
    with pytest.raises(UserError, match="algo.encoder=cnn needs image observations") as err:
        build_algo(cfg, env.observation_space, env.action_space)
    assert "\n" not in str(err.value)


def test_bc_on_images_through_rl_run_and_its_checkpoint_loads(tmp_path, monkeypatch):
    path = tmp_path / "images.npz"
    save_dataset(path, image_dataset(80, env_id=MODULE_ENV_ID))
    run = tmp_path / "run"
    proc = run_cli(["algo=bc", "env=gym", f"env.id={MODULE_ENV_ID}", "env.n_envs=1", *FAST,
                    f"dataset.path={path}", *SMALL_CNN, "algo.hidden_sizes=[16]",
                    "algo.batch_size=16", "trainer.total_steps=20", "trainer.eval_every=10"],
                   tmp_path, run_dir=run, pythonpath=REPO)
    assert proc.returncode == 0, proc.stderr
    res = read_results(run)
    assert res["status"] == "completed" and res["grad_steps"] == 20
    state = load_checkpoint(run / "checkpoints" / "last.pt")["algo"]
    assert "cnn.convs.0.weight" in state["net"]
    from rl_runner.policy import load_policy

    monkeypatch.setenv("RL_RUNNER_TRUSTED", MODULE_ENV_ID.split(":")[0])
    policy = load_policy(run, "last")
    obs = image_dataset(4).observations
    np.testing.assert_array_equal(policy.act(obs), policy.algo.act(obs, deterministic=True))
    assert set(policy.act(obs).tolist()) <= {0, 1, 2}
    net = policy.algo.net.state_dict()
    for key, value in state["net"].items():
        torch.testing.assert_close(net[key], value)


def offline_batch(data: Dataset, n: int = 16) -> OfflineBatch:
    return OfflineBatch(data.observations[:n], data.actions[:n], data.rewards[:n],
                        data.next_observations[:n], data.terminations[:n])


# ---- cql (Discrete) -----------------------------------------------------------------------------
def make_cql(**kw):
    from rl_runner.algos.cql import CQL

    torch.manual_seed(0)
    args = dict(observation_space=IMAGES, action_space=gym.spaces.Discrete(3), n_envs=1,
                total_steps=100, seed=0, hidden_sizes=[16], batch_size=16, **CNN_KWARGS)
    return CQL.variant_for(gym.spaces.Discrete(3))(**{**args, **kw})


@pytest.mark.parametrize("lagrange", [False, True])
def test_discrete_cql_on_images_has_a_cnn_in_q_and_its_target_and_round_trips(lagrange):
    cql = make_cql(lagrange=lagrange)
    q = cql.learner
    assert isinstance(q.net.cnn, NatureCNN) and isinstance(q.target.net.cnn, NatureCNN)
    assert q.target.net.cnn is not q.net.cnn
    data = image_dataset()
    batch = offline_batch(data)
    before = q.target.flat.clone()
    metrics = cql.update(batch)
    assert {"qf_loss", "q_data", "cql_gap"} <= set(metrics)
    assert not torch.equal(before, q.target.flat)  # the target (CNN included) follows
    state = cql.state_dict()
    assert all(t.device.type == "cpu" for t in cpu_tensors(state))
    assert any(k.startswith("cnn.") for k in state["learner"]["net"])
    other = make_cql(lagrange=lagrange, seed=4)
    other.load_state_dict(through_a_file(state))
    obs = data.observations[:6]
    np.testing.assert_array_equal(other.act(obs, deterministic=True),
                                  cql.act(obs, deterministic=True))
    assert other.act(obs).shape == (6,)
    assert other.update(batch) == cql.update(batch)


def test_discrete_cql_on_images_through_rl_run_with_the_default_nature_cnn(tmp_path):
    """No algo.cnn_* key: the Nature CNN's own sizes, on the smallest image they take."""
    path = tmp_path / "images.npz"
    save_dataset(path, Dataset(**image_rows(40, size=36), metadata={"env_id": MODULE_ENV_ID}))
    run = tmp_path / "run"
    proc = run_cli(["algo=cql", "env=gym", f"env.id={MODULE_ENV_ID}", "+env.kwargs.size=36",
                    "env.n_envs=1", *FAST, f"dataset.path={path}", "algo.hidden_sizes=[16]",
                    "algo.batch_size=8", "trainer.total_steps=6", "trainer.eval_every=3"],
                   tmp_path, run_dir=run, pythonpath=REPO)
    assert proc.returncode == 0, proc.stderr
    assert read_results(run)["grad_steps"] == 6
    state = load_checkpoint(run / "checkpoints" / "last.pt")["algo"]["learner"]
    assert state["net"]["cnn.convs.0.weight"].shape == (32, 4, 8, 8)
    assert state["net"]["cnn.linear.weight"].shape == (512, 64)


def test_discrete_cql_on_images_through_the_trainer(tmp_path):
    from rl_runner.trainer import train

    path = tmp_path / "images.npz"
    save_dataset(path, image_dataset(80))
    cnn = [f"++{o}" for o in SMALL_CNN]  # ++: whether algo/cql.yaml lists them or not
    res = train(compose(["algo=cql", "env=gym", f"env.id={ENV_ID}", "env.n_envs=1", *FAST,
                         f"dataset.path={path}", *cnn, "algo.hidden_sizes=[16]",
                         "algo.batch_size=16", "trainer.total_steps=20",
                         "trainer.eval_every=10"]), tmp_path / "run")
    assert res["status"] == "completed" and res["grad_steps"] == 20
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["algo"]
    assert "cnn.convs.0.weight" in state["learner"]["net"]


# ---- gail ---------------------------------------------------------------------------------------
SMALL_PPO = {"n_steps": 8, "batch_size": 16, "n_epochs": 1}


def make_gail(action_space: gym.Space = gym.spaces.Discrete(3), **kw):
    from rl_runner.algos.gail import GAIL

    torch.manual_seed(0)
    args = dict(observation_space=IMAGES, action_space=action_space, n_envs=2,
                total_steps=100, seed=0, learner_kwargs=SMALL_PPO, disc_batch_size=16,
                disc_hidden_sizes=[16], **CNN_KWARGS)
    return GAIL(**{**args, **kw})


def test_gail_on_images_reads_them_with_a_cnn_and_round_trips():
    from rl_runner.algos.gail import ImagePairs
    from tests.algos.helpers import collect

    gail = make_gail(grad_penalty=1.0)
    assert isinstance(gail.disc.cnn, NatureCNN) and gail.image
    data = image_dataset()
    gail.fit_dataset(data)
    assert isinstance(gail.expert, ImagePairs)
    assert gail.expert.obs is data.observations  # the expert's images: not copied, uint8
    batch = collect(gail, ENV_ID, n_envs=2)
    assert all(o.dtype == np.uint8 for o in gail._raw_obs)
    metrics = gail.update(batch)
    assert metrics["disc_grad_penalty"] > 0 and np.isfinite(metrics["disc_loss"])
    state = gail.state_dict()
    assert all(t.device.type == "cpu" for t in cpu_tensors(state["disc"]))
    assert any(k.startswith("cnn.") for k in state["disc"])
    other = make_gail(grad_penalty=1.0, seed=7)
    other.load_state_dict(through_a_file(state))
    other.fit_dataset(data)
    x = gail.inputs(data.observations[:8], data.actions[:8])
    np.testing.assert_array_equal(other.rewards(x), gail.rewards(x))
    obs = data.observations[:4]
    np.testing.assert_array_equal(other.act(obs, deterministic=True),
                                  gail.act(obs, deterministic=True))
    assert other.disc_step(x) == gail.disc_step(x)


def test_gails_learner_takes_its_encoder_keys_unless_learner_kwargs_sets_them():
    gail = make_gail()
    assert gail.learner.encoder == "cnn"
    assert gail.learner.net.state_dict()["encoder.convs.0.weight"].shape == (4, 4, 3, 3)
    own = make_gail(learner_kwargs={**SMALL_PPO, "encoder": "mlp"})
    assert own.learner.encoder == "mlp" and isinstance(own.disc.cnn, NatureCNN)


def test_gail_bc_init_clones_expert_images_into_the_learner():
    gail = make_gail(bc_init_steps=3)
    gail.fit_dataset(image_dataset())
    assert np.isfinite(gail.bc_loss)


def test_gail_on_images_with_box_actions_joins_the_action_vector():
    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    gail = make_gail(box)
    data = image_dataset(continuous=True)
    gail.fit_dataset(data)
    assert gail.expert.act.shape == (60, 2) and gail.rewards(gail.expert[:5]).shape == (5,)


def test_gail_on_images_through_the_trainer(tmp_path):
    from rl_runner.trainer import train

    path = tmp_path / "images.npz"
    save_dataset(path, image_dataset(40))
    res = train(compose(["algo=gail", "env=gym", f"env.id={ENV_ID}", "env.n_envs=2", *FAST,
                         f"dataset.path={path}", *SMALL_CNN, "algo.disc_hidden_sizes=[16]",
                         "algo.disc_batch_size=16",
                         "++algo.learner_kwargs={n_steps:8,batch_size:16,n_epochs:1}",
                         "trainer.total_steps=32", "trainer.eval_every=16"]), tmp_path / "run")
    assert res["status"] == "completed" and res["env_steps"] == 32
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["algo"]
    assert "cnn.convs.0.weight" in state["disc"]


# ---- rl-collect ---------------------------------------------------------------------------------
def test_rl_collect_keeps_image_observations_uint8(tmp_path):
    from rl_runner.rl_collect import main as rl_collect
    from rl_runner.trainer import train

    run = tmp_path / "ppo"
    train(compose(["algo=ppo", "env=gym", f"env.id={ENV_ID}", "env.n_envs=2", *FAST,
                   *SMALL_CNN, "algo.n_steps=8", "algo.batch_size=16",
                   "trainer.total_steps=16", "trainer.eval_every=16"]), run)
    rl_collect([f"run={run}", "episodes=2", f"out={tmp_path / 'd.npz'}"])
    data = load_dataset(tmp_path / "d.npz")
    assert data.observations.dtype == np.uint8 and data.observations.shape == (20, *SHAPE)


def test_a_cnn_on_the_cpu_asks_for_one_torch_thread():
    """As ppo's (tests/test_onpolicy_images.py): auto keeps one thread for a CNN."""
    assert make_bc().preferred_threads(4) == 1
    assert make_cql().preferred_threads(4) == 1
