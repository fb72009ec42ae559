"""rl-collect and the dataset file: round trip, episode bookkeeping, noise, refusals, bad files."""
from __future__ import annotations

import numpy as np
import pytest

from rl_runner.datasets import Dataset, check_matches, load_dataset, save_dataset
from rl_runner.envs import make_one
from rl_runner.errors import UserError
from rl_runner.rl_collect import main
from rl_runner.trainer import train
from tests.conftest import FAST, compose, tool_error

SAC_FAST = ["algo=sac", "env=pendulum", *FAST, "algo.hidden_sizes=[32,32]", "algo.batch_size=32",
            "algo.learning_starts=100", "trainer.total_steps=300", "trainer.eval_every=150"]


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("collect") / "sac"
    train(compose(SAC_FAST), run_dir)
    return run_dir


def exit_line(capsys, argv: list[str]) -> str:
    return tool_error(capsys, main, argv, "rl-collect")


def test_episodes_round_trip_with_consistent_bookkeeping(cartpole_run, tmp_path):
    out = tmp_path / "d.npz"
    main([f"run={cartpole_run}", "episodes=3", f"out={out}"])
    data = load_dataset(out)
    meta = data.metadata
    assert meta["env_id"] == "CartPole-v1" and meta["action_space"] == {
        "type": "Discrete", "n": 2, "start": 0}
    assert meta["collection"]["episodes"] == 3 and meta["source"]["algo"] == "ppo"
    assert meta["source"]["checkpoint"].endswith("best.pt")
    ends = data.terminations | data.truncations
    assert data.episode_starts.sum() == 3 == ends.sum() == len(meta["episode_returns"])
    assert ends[-1] and data.episode_starts[0]
    assert sum(meta["episode_lengths"]) == len(data)
    # within an episode the next observation is the following row's observation
    inner = ~ends[:-1]
    np.testing.assert_array_equal(data.next_observations[:-1][inner], data.observations[1:][inner])
    np.testing.assert_allclose(sum(meta["episode_returns"]), data.rewards.sum(), rtol=1e-6)
    assert data.actions.dtype == np.int64 and set(np.unique(data.actions)) <= {0, 1}
    # the same settings give the same file contents
    main([f"run={cartpole_run}", "episodes=3", f"out={tmp_path / 'again.npz'}"])
    again = load_dataset(tmp_path / "again.npz")
    for name, arr in data.arrays().items():
        np.testing.assert_array_equal(arr, again.arrays()[name])


def test_steps_cut_the_last_episode_and_mark_it_truncated(cartpole_run, tmp_path):
    main([f"run={cartpole_run}", "steps=50", f"out={tmp_path / 'd.npz'}"])
    data = load_dataset(tmp_path / "d.npz")
    assert len(data) == 50
    assert data.truncations[-1] or data.terminations[-1]


def test_epsilon_one_acts_at_random(cartpole_run, tmp_path):
    main([f"run={cartpole_run}", "steps=200", f"out={tmp_path / 'a.npz'}"])
    main([f"run={cartpole_run}", "steps=200", "epsilon=1.0", f"out={tmp_path / 'b.npz'}"])
    policy, rand = load_dataset(tmp_path / "a.npz"), load_dataset(tmp_path / "b.npz")
    assert rand.metadata["collection"]["epsilon"] == 1.0
    # a random CartPole policy falls within ~20 steps; the trained one (or any fixed one) differs
    assert len(rand.metadata["episode_returns"]) > len(policy.metadata["episode_returns"])


def test_box_noise_stays_in_bounds_and_default_name_under_the_run(pendulum_run):
    main([f"run={pendulum_run}", "episodes=1", "noise=0.5"])
    path = pendulum_run / "datasets" / "best_ep1_s0_noise0.5.npz"
    data = load_dataset(path)
    assert data.actions.shape == (200, 1) and data.actions.dtype == np.float32
    assert np.abs(data.actions).max() <= 2.0 and np.abs(data.actions).max() > 0
    env = make_one("Pendulum-v1", {})
    check_matches(data, path, "Pendulum-v1", env.observation_space, env.action_space)
    with pytest.raises(UserError, match="collected on Pendulum-v1, but this run's env is "
                                        "CartPole-v1"):
        check_matches(data, path, "CartPole-v1", env.observation_space, env.action_space)


def test_an_existing_file_is_never_replaced(cartpole_run, tmp_path, capsys):
    out = tmp_path / "d.npz"
    out.write_bytes(b"mine")
    assert "already exists" in exit_line(capsys, [f"run={cartpole_run}", f"out={out}"])
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("argv, says", [(["episodes=2", "steps=5"], "not both"),
                                        (["epsilon=2"], "epsilon=2"),
                                        (["noise=0.1"], "noise= is for Box actions")])
def test_bad_settings_are_one_line_and_exit_2(cartpole_run, tmp_path, argv, says, capsys):
    line = exit_line(capsys, [f"run={cartpole_run}", f"out={tmp_path / 'd.npz'}", *argv])
    assert says in line
    assert not (tmp_path / "d.npz").exists()


def small_dataset(**change) -> Dataset:
    n = 4
    arrays = dict(observations=np.zeros((n, 3), np.float32), actions=np.zeros((n, 1), np.float32),
                  rewards=np.zeros(n, np.float32), next_observations=np.zeros((n, 3), np.float32),
                  terminations=np.zeros(n, bool), truncations=np.zeros(n, bool),
                  episode_starts=np.eye(1, n, dtype=bool)[0])
    return Dataset(**{**arrays, **change}, metadata={"env_id": "Pendulum-v1"})


def test_corrupt_or_inconsistent_files_are_clear_errors(tmp_path):
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(UserError, match=f"dataset {bad}: not a readable .npz"):
        load_dataset(bad)
    with pytest.raises(UserError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, observations=np.zeros(3))
    with pytest.raises(UserError, match="not an rl-runner dataset \\(missing actions"):
        load_dataset(other)
    with pytest.raises(UserError, match="actions has 3 rows, rewards has 4"):
        save_dataset(tmp_path / "x.npz", small_dataset(actions=np.zeros((3, 1), np.float32)))
    with pytest.raises(UserError, match="terminations must be bool"):
        save_dataset(tmp_path / "x.npz", small_dataset(terminations=np.zeros(4)))
    assert not (tmp_path / "x.npz").exists()
    save_dataset(tmp_path / "ok.npz", small_dataset())
    env = make_one("Pendulum-v1", {})
    wrong = make_one("CartPole-v1", {})
    with pytest.raises(UserError, match="observations of shape \\(3,\\), but Pendulum-v1 gives "
                                        "\\(4,\\)"):
        check_matches(load_dataset(tmp_path / "ok.npz"), tmp_path / "ok.npz", "Pendulum-v1",
                      wrong.observation_space, env.action_space)
    with pytest.raises(UserError, match="do not fit Discrete"):
        check_matches(load_dataset(tmp_path / "ok.npz"), tmp_path / "ok.npz", "Pendulum-v1",
                      env.observation_space, wrong.action_space)


@pytest.mark.parametrize("buffer_size", [1000, 150])  # 150 < 300 steps: the ring wrapped
def test_a_saved_replay_buffer_becomes_a_dataset_oldest_row_first(tmp_path, buffer_size):
    run = tmp_path / "sac"
    train(compose([*SAC_FAST, "trainer.save_replay_buffer=true",
                   f"algo.buffer_size={buffer_size}"]), run)
    main([f"run={run}", "source=replay"])
    data = load_dataset(run / "datasets" / "replay.npz")
    assert len(data) == min(300, buffer_size)
    assert data.metadata["collection"] == {"source": "replay", "rows": len(data)}
    assert data.actions.shape == (len(data), 1) and np.abs(data.actions).max() <= 2.0
    # consecutive rows chain, except where Pendulum's 200-step time limit reset the episode
    first_step = 300 - len(data)
    chained = [(first_step + i + 1) % 200 != 0 for i in range(len(data) - 1)]
    np.testing.assert_array_equal(data.next_observations[:-1][chained],
                                  data.observations[1:][chained])
    assert data.episode_starts[0] and not data.truncations.any()


def test_replay_source_without_a_saved_buffer_is_exit_2(pendulum_run, tmp_path, capsys):
    line = exit_line(capsys, [f"run={pendulum_run}", "source=replay", f"out={tmp_path / 'r.npz'}"])
    assert "holds no replay buffer" in line and "trainer.save_replay_buffer=true" in line


@pytest.mark.parametrize("change", [
    lambda b: b.update(pos=10**9), lambda b: b.update(data="x"),
    lambda b: b.update(data=np.zeros((5, 2), np.float32), size=5),
])
def test_a_replay_buffer_that_does_not_fit_is_exit_2(tmp_path, capsys, change):
    from rl_runner.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "sac"
    train(compose([*SAC_FAST, "trainer.save_replay_buffer=true"]), run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    change(state["replay_buffer"])
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    line = exit_line(capsys, [f"run={run}", "source=replay", f"out={tmp_path / 'r.npz'}"])
    assert "replay buffer does not fit" in line, line
    assert not (tmp_path / "r.npz").exists()
