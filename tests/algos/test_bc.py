"""BC: the losses against torch's own densities, learning a known rule, runs through the trainer."""
from __future__ import annotations

import hashlib
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.bc import BC
from rl_runner.datasets import Dataset, load_dataset, save_dataset
from rl_runner.errors import UserError
from rl_runner.experts import expert_path
from rl_runner.demonstrations import expert_dataset, subsample
from rl_runner.offline import OfflineFeeder
from rl_runner.trainer import train
from tests.algos.helpers import PENDULUM_ACT, PENDULUM_OBS
from tests.conftest import FAST, compose, read_results, read_scalars


def make_bc(action_space: gym.Space, obs_space: gym.Space = PENDULUM_OBS, **kw) -> BC:
    torch.manual_seed(0)
    args = dict(observation_space=obs_space, action_space=action_space, n_envs=1,
                total_steps=1000, seed=0)
    return BC(**{**args, **kw})


def rule_dataset(n: int, discrete: bool, episode_len: int = 50, seed: int = 0) -> Dataset:
    """Actions from a fixed rule of the observation: 1 where obs[0] > 0 (Discrete), or
    a = clip(1.5 obs[0] - obs[1], -2, 2) (Box, Pendulum's bounds)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    if discrete:
        actions = (obs[:, 0] > 0).astype(np.int64)
    else:
        actions = np.clip(1.5 * obs[:, :1] - obs[:, 1:2], -2, 2).astype(np.float32)
    starts = np.arange(n) % episode_len == 0
    ends = np.roll(starts, -1)
    return Dataset(observations=obs, actions=actions, rewards=np.ones(n, np.float32),
                   next_observations=np.roll(obs, -1, 0), terminations=ends,
                   truncations=np.zeros(n, bool), episode_starts=starts,
                   metadata={"env_id": "Pendulum-v1" if not discrete else "CartPole-v1"})


def fit(algo: BC, data: Dataset, steps: int) -> OfflineFeeder:
    feeder = OfflineFeeder(data, algo, seed=0)
    algo.fit_dataset(feeder.train)
    for _ in range(steps):
        algo.update(feeder.collect(algo)[0])
    return feeder


def test_gaussian_nll_and_cross_entropy_match_torch_distributions():
    algo = make_bc(PENDULUM_ACT)
    with torch.no_grad():
        algo.log_std.fill_(-0.7)
    obs = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    actions = np.linspace(-1.9, 1.9, 8, dtype=np.float32)[:, None]
    mean = algo._out(obs)
    target = torch.from_numpy(actions / 2.0)  # Pendulum's bounds are [-2, 2]
    expected = -torch.distributions.Normal(mean, torch.tensor(-0.7).exp()).log_prob(target)
    assert algo.loss_terms(obs, actions).item() == pytest.approx(expected.sum(-1).mean().item(),
                                                                 rel=1e-5)
    disc = make_bc(gym.spaces.Discrete(3))
    acts = np.array([0, 2, 1, 1, 0, 2, 2, 1])
    logits = disc._out(obs)
    expected = -torch.distributions.Categorical(logits=logits).log_prob(torch.from_numpy(acts))
    assert disc.loss_terms(obs, acts).item() == pytest.approx(expected.mean().item(), rel=1e-5)


def test_discrete_bc_learns_a_threshold_rule():
    algo = make_bc(gym.spaces.Discrete(2))
    feeder = fit(algo, rule_dataset(2000, discrete=True), 600)
    val = algo.validate(feeder.validation)
    assert len(feeder.validation) == 200
    assert val["val_accuracy"] > 0.95


@pytest.mark.parametrize("loss", ["nll", "mse"])
def test_box_bc_learns_a_linear_rule_in_the_envs_units(loss):
    algo = make_bc(PENDULUM_ACT, loss=loss)
    feeder = fit(algo, rule_dataset(2000, discrete=False), 800)
    assert algo.validate(feeder.validation)["val_action_error"] < 0.15
    acts = algo.act(np.array([[5.0, -5.0, 0.0]], np.float32), deterministic=True)
    assert acts.shape == (1, 1) and acts[0, 0] == pytest.approx(2.0, abs=0.1)  # clipped bound


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="algo.loss='l1'"):
        make_bc(PENDULUM_ACT, loss="l1")
    with pytest.raises(UserError, match="algo.val_fraction=1.0"):
        make_bc(PENDULUM_ACT, val_fraction=1.0)


def test_subsample_takes_whole_episodes_then_random_rows():
    data = rule_dataset(200, discrete=True, episode_len=50)
    two = subsample(data, episodes=2, max_samples=None, seed=0)
    assert len(two) == 100 and two.episode_starts.sum() == 2
    few = subsample(data, episodes=1, max_samples=30, seed=0)
    assert len(few) == 30
    assert np.isin(few.observations[:, 0], data.observations[:50, 0]).all()
    assert not np.array_equal(few.observations, data.observations[:30])  # drawn, not the head
    with pytest.raises(UserError, match="dataset.episodes=9, but the dataset holds 4"):
        subsample(data, episodes=9, max_samples=None, seed=0)


def test_bc_through_the_trainer_logs_validation_and_counts_gradient_steps(tmp_path):
    path = tmp_path / "rule.npz"
    data = rule_dataset(500, discrete=True)
    data.observations = np.concatenate([data.observations, data.observations[:, :1]], 1)
    data.next_observations = np.concatenate([data.next_observations,
                                             data.next_observations[:, :1]], 1)
    save_dataset(path, data)  # CartPole's observation has 4 numbers
    run = tmp_path / "run"
    res = train(compose(["algo=bc", "env=cartpole", *FAST, f"dataset.path={path}",
                         "trainer.total_steps=300", "trainer.eval_every=150"]), run)
    assert res["env_steps"] == 300 == res["grad_steps"]
    scalars = read_scalars(run / "tb")
    assert {"losses/bc_loss", "losses/val_loss", "losses/val_accuracy",
            "eval/return_mean"} <= set(scalars)
    assert [s for s, _ in scalars["eval/return_mean"]] == [150, 300]
    assert read_results(run)["status"] == "completed"


def test_default_dataset_comes_from_the_bundled_expert_once_then_from_the_cache(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["algo=bc", "env=cartpole", *FAST, "trainer.total_steps=100",
            "trainer.eval_every=100", "dataset.expert_episodes=2"]
    train(compose(args), tmp_path / "a")
    cached = list((tmp_path / "cache" / "rl-runner" / "datasets").glob("cartpole_expert_*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    meta = load_dataset(cached[0]).metadata
    assert meta["source"]["checkpoint"].endswith("experts/cartpole.pt")
    assert len(meta["episode_returns"]) == 2 and min(meta["episode_returns"]) >= 475
    train(compose(args), tmp_path / "b")
    assert cached[0].stat().st_mtime_ns == stamp
    train(compose([*args[:-1], "dataset.expert_episodes=3"]), tmp_path / "c")
    assert len(list(cached[0].parent.glob("cartpole_expert_*.npz"))) == 2


def test_expert_noise_and_epsilon_collect_and_cache_their_own_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    clean, clean_path = expert_dataset("pendulum", 1, 0, progress=False)
    noisy, noisy_path = expert_dataset("pendulum", 1, 0, False, noise=0.5)
    mixed, mixed_path = expert_dataset("pendulum", 1, 0, False, epsilon=0.5)
    assert len({clean_path, noisy_path, mixed_path}) == 3
    # the settings without noise keep the cache name they had before these keys existed
    digest = hashlib.sha256(expert_path("pendulum").read_bytes())
    digest.update(json.dumps({"episodes": 1, "seed": 0, "deterministic": True, "noise": 0.0,
                              "epsilon": 0.0}, sort_keys=True).encode())
    assert clean_path.name == f"pendulum_expert_{digest.hexdigest()[:16]}.npz"
    assert noisy.metadata["collection"]["noise"] == 0.5
    assert mixed.metadata["collection"]["epsilon"] == 0.5
    np.testing.assert_array_equal(noisy.observations[0], clean.observations[0])  # same reset
    for other in (noisy, mixed):  # other actions, so another path and a lower return
        assert not np.allclose(other.actions, clean.actions)
        assert other.metadata["episode_returns"][0] < clean.metadata["episode_returns"][0]
    assert expert_dataset("pendulum", 1, 0, False, noise=0.5)[1] == noisy_path  # from the cache


def test_dataset_expert_noise_reaches_the_collection_of_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    train(compose(["algo=bc", "env=pendulum", *FAST, "trainer.total_steps=100",
                   "trainer.eval_every=100", "dataset.expert_episodes=1",
                   "dataset.expert_noise=0.5"]), tmp_path / "run")
    cached = list((tmp_path / "cache" / "rl-runner" / "datasets").glob("pendulum_expert_*.npz"))
    assert len(cached) == 1 and load_dataset(cached[0]).metadata["collection"]["noise"] == 0.5


def test_a_dataset_of_another_env_or_a_corrupt_file_is_exit_2(cli, tmp_path):
    pend = tmp_path / "pend.npz"
    save_dataset(pend, rule_dataset(100, discrete=False))
    proc = cli(["algo=bc", "env=cartpole", *FAST, f"dataset.path={pend}"])
    assert proc.returncode == 2
    assert f"dataset {pend} was collected on Pendulum-v1, but this run's env is CartPole-v1" \
        in proc.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 64)
    proc = cli(["algo=bc", "env=cartpole", *FAST, f"dataset.path={bad}"],
               run_dir=tmp_path / "run2")
    assert proc.returncode == 2 and f"dataset {bad}: not a readable .npz file" in proc.stderr
    assert bad.read_bytes() == b"\x00" * 64


@pytest.mark.parametrize("override, says", [("dataset.episodes=abc", "dataset.episodes='abc'"),
                                            ("dataset.expert_episodes=0", "must be positive"),
                                            ("dataset.path=/nope.npz", "/nope.npz: no such file"),
                                            ("dataset.expert_noise=0.5", "is for Box actions"),
                                            ("dataset.expert_epsilon=2", "must lie in [0, 1]")])
def test_bad_dataset_settings_are_exit_2(cli, override, says):
    proc = cli(["algo=bc", "env=cartpole", *FAST, override])
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr


def test_an_offline_run_resumes_on_an_env_that_cannot_save_its_state(tmp_path):
    # Box2D envs cannot be pickled mid-episode; offline runs step no env, so nothing to restore
    path = tmp_path / "ll.npz"
    data = rule_dataset(200, discrete=True)
    data.observations = np.tile(data.observations, (1, 3))[:, :8]
    data.next_observations = np.tile(data.next_observations, (1, 3))[:, :8]
    data.metadata = {"env_id": "LunarLander-v3"}
    save_dataset(path, data)
    args = ["algo=bc", "env=lunarlander", *FAST, f"dataset.path={path}",
            "trainer.eval_every=100"]
    train(compose([*args, "trainer.total_steps=100"]), tmp_path / "run")
    res = train(compose([*args, "trainer.total_steps=200"]), tmp_path / "run", resume=True)
    assert res["status"] == "completed" and res["grad_steps"] == 200
