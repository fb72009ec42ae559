"""Minari datasets on disk as dataset.path: rows as rl-collect writes them, clear refusals."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from rl_runner.errors import UserError
from rl_runner.minari_data import is_minari, load_minari
from tests.conftest import FAST, error_line, read_results

minari = pytest.importorskip("minari")


def random_episodes(env_id: str, n: int) -> list:
    """n episodes of uniform random actions, as Minari's episode buffers (no jax needed)."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    env, buffers = gym.make(env_id, max_episode_steps=30), []
    env.action_space.seed(0)
    for i in range(n):
        obs, _ = env.reset(seed=i)
        steps = {"observations": [obs], "actions": [], "rewards": [], "terminations": [],
                 "truncations": []}
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, term, trunc, _ = env.step(action)
            for key, value in zip(steps, (obs, action, reward, term, trunc)):
                steps[key].append(value)
            done = term or trunc
        buffers.append(EpisodeBuffer(
            id=i, infos={}, observations=np.array(steps.pop("observations")),
            actions=np.array(steps.pop("actions")), **steps))
    return buffers


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    with warnings.catch_warnings():  # minari warns about the optional extras it lacks
        warnings.simplefilter("ignore")
        for env_id, name in (("CartPole-v1", "cartpole/random-v0"),
                             ("Pendulum-v1", "pendulum/random-v0")):
            minari.create_dataset_from_buffers(name, random_episodes(env_id, 3), env=env_id,
                                               algorithm_name="random")
    return root


def test_episodes_become_rows_with_the_next_observation_of_each_step(minari_root):
    source = minari.load_dataset("cartpole/random-v0")
    data = load_minari("minari:cartpole/random-v0")
    assert len(data) == source.total_steps
    assert data.episode_starts.sum() == 3 and data.episode_starts[0]
    assert data.actions.dtype == np.int64 and data.actions.ndim == 1
    assert data.observations.dtype == np.float32
    row = 0
    for episode in source.iterate_episodes():
        n = len(episode)
        np.testing.assert_allclose(data.observations[row:row + n], episode.observations[:-1])
        np.testing.assert_allclose(data.next_observations[row:row + n], episode.observations[1:])
        np.testing.assert_array_equal(data.actions[row:row + n], episode.actions)
        assert data.terminations[row + n - 1] or data.truncations[row + n - 1]
        row += n
    meta = data.metadata
    assert meta["env_id"] == "CartPole-v1" and meta["source"]["minari"] == "cartpole/random-v0"
    assert len(meta["episode_returns"]) == 3


def test_a_directory_and_box_actions(minari_root):
    directory = minari_root / "pendulum" / "random-v0"
    assert is_minari(str(directory)) and is_minari(str(directory / "data"))
    data = load_minari(str(directory))
    assert data.actions.dtype == np.float32 and data.actions.shape == (len(data), 1)
    assert data.metadata["env_id"] == "Pendulum-v1"


def test_a_missing_minari_dataset_is_a_user_error_that_does_not_download(minari_root):
    with pytest.raises(UserError, match="no such Minari dataset on disk"):
        load_minari("minari:cartpole/expert-v9")


def test_bc_trains_from_a_minari_dataset_and_refuses_another_envs(minari_root, cli, tmp_path):
    ok = cli(["algo=bc", "env=cartpole", "dataset.path=minari:cartpole/random-v0", *FAST,
              "trainer.total_steps=20", "trainer.eval_every=20"])
    assert ok.returncode == 0, ok.stderr
    assert read_results(tmp_path / "run")["status"] == "completed"
    bad = cli(["algo=bc", "env=acrobot", "dataset.path=minari:cartpole/random-v0", *FAST],
              run_dir=tmp_path / "bad")
    assert "was collected on CartPole-v1" in error_line(bad)


def test_an_rl_runner_dataset_round_trips_through_minari(minari_root, cartpole_run, tmp_path,
                                                         capsys):
    from rl_runner.datasets import load_dataset
    from rl_runner.rl_collect import main as collect
    from scripts.to_minari import main as to_minari

    out = tmp_path / "d.npz"
    collect([f"run={cartpole_run}", "episodes=3", f"out={out}"])
    to_minari([str(out), "cartpole/ppo-v0"])
    ours, back = load_dataset(out), load_minari("minari:cartpole/ppo-v0")
    for name, arr in ours.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr, err_msg=name)
    assert back.metadata["episode_returns"] == pytest.approx(ours.metadata["episode_returns"])
    with pytest.raises(SystemExit) as e:  # the id exists: refused, nothing replaced
        to_minari([str(out), "cartpole/ppo-v0"])
    assert e.value.code == 2 and "to_minari: error:" in capsys.readouterr().err


def test_replay_rows_that_do_not_continue_each_other_become_separate_episodes(minari_root,
                                                                            tmp_path):
    from rl_runner.datasets import Dataset, describe_space, save_dataset
    from scripts.to_minari import main as to_minari

    import gymnasium as gym
    env = gym.make("Pendulum-v1")
    obs = np.arange(18, dtype=np.float32).reshape(6, 3)
    nxt = obs + 1.0
    nxt[:2], nxt[3:5] = obs[1:3], obs[4:6]  # rows 0-2 chain, then a reset: rows 3-5 chain
    data = Dataset(observations=obs, actions=np.zeros((6, 1), np.float32),
                   rewards=np.ones(6, np.float32), next_observations=nxt,
                   terminations=np.zeros(6, bool), truncations=np.zeros(6, bool),
                   episode_starts=np.eye(1, 6, dtype=bool)[0],  # as a replay buffer has it
                   metadata={"env_id": "Pendulum-v1", "env_kwargs": {},
                             "observation_space": describe_space(env.observation_space),
                             "action_space": describe_space(env.action_space)})
    save_dataset(tmp_path / "replay.npz", data)
    to_minari([str(tmp_path / "replay.npz"), "pendulum/replay-v0"])
    back = load_minari("minari:pendulum/replay-v0")
    np.testing.assert_array_equal(back.episode_starts, [1, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(back.truncations, [0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(back.next_observations, nxt)


@pytest.mark.parametrize("name", ["minari:cartpole/random-v0", "directory"])
def test_a_dataset_without_spaces_never_makes_the_env_its_spec_names(minari_root, tmp_path, name):
    """Minari builds the env from metadata's env_spec where the spaces are missing: a handed-
    over dataset could name any entry point (here one that writes a marker file)."""
    import json

    data_dir = minari_root / "cartpole" / "random-v0" / "data"
    meta_file = data_dir / "metadata.json"
    meta = json.loads(meta_file.read_text())
    marker = tmp_path / "marker"
    spec = json.loads(meta["env_spec"])
    spec.update(entry_point="pathlib:Path.touch", kwargs={"self": str(marker)})
    meta["env_spec"] = json.dumps(spec)
    del meta["observation_space"], meta["action_space"]
    meta_file.write_text(json.dumps(meta))
    path = name if name.startswith("minari:") else str(data_dir.parent)
    with pytest.raises(UserError, match="gives no observation_space and action_space"):
        load_minari(path)
    assert not marker.exists()
