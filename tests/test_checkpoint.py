"""Checkpoints never run code from the file: crafted pickles are refused by every entry point,
format-1 files of the previous release load without unpickling, and env state is plain data."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_runner import rl_collect, rl_eval
from rl_runner.checkpoint import (decode, encode, load_checkpoint, nonfinite_paths,
                                  save_checkpoint)
from rl_runner.envs import make_vec_env
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.errors import UserError
from tests.conftest import error_line, run_cli, tool_error

class Payload:
    """Unpickling it calls open(marker, "w"): the file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile_run(finished_run, tmp_path) -> tuple[Path, Path]:
    """A copy of a real run whose best.pt and last.pt each carry a payload; and the marker."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "marker"
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        state["counters"]["evil"] = Payload(marker)
        torch.save(state, run / "checkpoints" / name)
    return run, marker


def test_crafted_checkpoints_are_refused_everywhere_and_run_nothing(hostile_run, tmp_path,
                                                                    capsys):
    run, marker = hostile_run
    bare = run / "bare.pt"  # inside the run: a file elsewhere is refused before it is read
    torch.save({"format_version": 2, "algo": Payload(marker)}, bare)
    for argv in ([f"run={run}"], [f"run={run}", "checkpoint=last"],
                 [f"run={run}", f"checkpoint={bare}"]):
        line = tool_error(capsys, rl_eval.main, [*argv, "episodes=1"], "rl-eval")
        assert "refused" in line and "pickled" in line, line
        line = tool_error(capsys, rl_collect.main, [*argv, "episodes=1"], "rl-collect")
        assert "refused" in line, line
    line = error_line(run_cli([f"resume={run}"], tmp_path))
    assert "refused" in line and "last.pt" in line, line
    assert not marker.exists()


def test_a_bare_pickle_is_refused_before_it_is_read(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"format_version": 2, "x": Payload(marker)}))
    with pytest.raises(UserError, match="not an rl-runner checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def legacy_copy(run: Path, folder: Path, marker: Path) -> Path:
    """The run as the previous release (format 1) wrote it: numpy arrays pickled as numpy
    objects and the env state as pickled bytes (here a payload, never to be unpickled)."""
    shutil.copytree(run, folder)
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(folder / "checkpoints" / name)
        state["format_version"] = 1
        state["env"]["state"] = pickle.dumps(Payload(marker))
        torch.save(state, folder / "checkpoints" / name)  # numpy arrays as numpy pickles
    return folder


def test_previous_release_checkpoints_load_without_unpickling(finished_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = legacy_copy(finished_run, tmp_path / "old", marker)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / "last.pt")
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert isinstance(state["feeder"]["obs"], np.ndarray)
    rl_eval.main([f"run={run}", "episodes=2"])
    assert "return" in capsys.readouterr().out
    resumed = run_cli([f"resume={run}", "trainer.total_steps=768"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "earlier rl-runner" in resumed.stderr  # its episodes restart: said, not hidden
    assert not marker.exists()


def test_numpy_arrays_round_trip_as_tensors(tmp_path):
    state = {"a": np.arange(6, dtype=np.uint32).reshape(2, 3), "n": np.float32(1.5),
             "t": (1, np.array([True, False])), "rng": np.random.get_state(), "w": torch.ones(2)}
    save_checkpoint(tmp_path / "c.pt", state)
    back = torch.load(tmp_path / "c.pt", weights_only=True)  # plain weights_only, no globals
    assert isinstance(back["a"]["__ndarray__"], torch.Tensor)
    back = decode(back)
    np.testing.assert_array_equal(back["a"], state["a"])
    assert back["a"].dtype == np.uint32 and back["n"] == 1.5 and type(back["n"]) is np.float32
    np.testing.assert_array_equal(back["rng"][1], state["rng"][1])
    assert not (tmp_path / "c.pt.tmp").exists() and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(TypeError):
        encode({"x": np.array([object()])})


def test_nonfinite_paths_names_where():
    state = {"net": {"w": torch.tensor([1.0, float("nan")]), "i": torch.tensor([1])},
             "opt": [np.array([np.inf])], "lr": 1e-3}
    assert nonfinite_paths(state) == ["net.w", "opt.0"]
    assert nonfinite_paths({"x": torch.zeros(2), "s": "nan"}) == []


def test_env_state_is_plain_data_and_continues_the_episode(tmp_path):
    envs_a, envs_b = make_vec_env("CartPole-v1", 2), make_vec_env("CartPole-v1", 2)
    envs_a.reset(seed=3)
    envs_b.reset(seed=99)
    for _ in range(5):
        envs_a.step(np.array([0, 1]))
    save_checkpoint(tmp_path / "e.pt", {"env": {"state": env_state(envs_a)}})
    restore_env_state(envs_b, load_checkpoint(tmp_path / "e.pt")["env"]["state"])
    for _ in range(30):  # through terminations: the envs' RNGs came back too
        a, b = envs_a.step(np.array([1, 1])), envs_b.step(np.array([1, 1]))
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError):
        restore_env_state(make_vec_env("Pendulum-v1", 2), env_state(envs_a))
    assert env_state(make_vec_env("LunarLander-v3", 1)) is None  # a Box2D world: not plain data



def test_numpy_strings_in_an_env_restart_its_episodes(tmp_path):
    """Blackjack keeps its dealer's card as np.str_, a str that a checkpoint refused as a numpy
    array of dtype <U1: every blackjack run failed at its first checkpoint. Strings are settings
    to the restore (set back only where unchanged), so such an env's episodes restart."""
    envs = make_vec_env("Blackjack-v1", 2)
    envs.reset(seed=3)
    assert env_state(envs) is None
    save_checkpoint(tmp_path / "e.pt", {"env": {"state": env_state(envs)}})


def test_subclasses_of_plain_types_restart_the_episodes(tmp_path):
    """An IntEnum is an int to isinstance: it was captured, pickled into the checkpoint, and the
    file then refused at load, so resume and rl-eval failed on that run."""
    import enum

    class Phase(enum.IntEnum):
        GO = 1

    for value in (Phase.GO, np.str_("x"), [Phase.GO], {"phase": Phase.GO}):
        envs = make_vec_env("CartPole-v1", 1)
        envs.reset(seed=0)
        envs.envs[0].unwrapped.phase = value
        assert env_state(envs) is None, value
    envs.envs[0].unwrapped.phase = np.float32(0.5)  # a numpy number is a number
    state = env_state(envs)
    save_checkpoint(tmp_path / "e.pt", {"env": {"state": state}})
    restore_env_state(envs, load_checkpoint(tmp_path / "e.pt")["env"]["state"])
    assert type(envs.envs[0].unwrapped.phase) is np.float32


def rewrite(run: Path, change) -> None:
    """Both checkpoints of `run`, loaded, changed by `change(state)` and saved as plain data."""
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        change(state)
        save_checkpoint(run / "checkpoints" / name, state)


def test_a_config_that_names_code_is_refused_everywhere(finished_run, tmp_path, capsys,
                                                        monkeypatch):
    """No pickle, but a config whose algo names a loader (Hydra would call it) or a class
    that is not a bundled algorithm: importing or calling it would run code of the file's
    choosing."""
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.bin"
    torch.save(Payload(marker), payload)
    nested = {"_target_": "rl_runner.algos.gail.GAIL",
              "learner_kwargs": {"_target_": "torch.load", "_args_": [str(payload)],
                                 "weights_only": False}}
    in_a_list = {"_target_": "rl_runner.algos.gail.GAIL",
                 "learner_kwargs": {"x": [[nested["learner_kwargs"]]]}}
    for algo, says in ((nested, "_target_"), (in_a_list, "_target_"),
                       ({"_target_": "tests.helpers.nan_algo.NaNAfter3PPO"},
                        "not a bundled algorithm")):
        run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        shutil.copytree(finished_run, run)
        rewrite(run, lambda s: s["config"].update(algo=algo))
        for main, prog in ((rl_eval.main, "rl-eval"), (rl_collect.main, "rl-collect")):
            assert says in tool_error(capsys, main, [f"run={run}", "episodes=1"], prog)
        assert says in error_line(run_cli([f"resume={run}"], tmp_path))
    assert not marker.exists()
    monkeypatch.setenv("RL_RUNNER_TRUSTED", "tests.helpers.nan_algo")  # the user's own choice
    rl_eval.main([f"run={run}", "episodes=1"])
    assert "return" in capsys.readouterr().out


@pytest.mark.parametrize("change", [
    lambda s: s.update(format_version=torch.tensor(2)),
    lambda s: s["algo"].update(net={"__ndarray__": torch.zeros(2, dtype=torch.bfloat16)}),
    lambda s: s["config"].pop("env"),
    lambda s: s["algo"].pop("optimizer"),
    lambda s: s.update(algo=[1, 2]),
    lambda s: s["counters"].update(best_eval="x"),
    lambda s: s["counters"].update(env_steps=10**30),
    lambda s: s["env"].update(state="abc"),
    lambda s: s["feeder"].update(obs={"__ndarray__": torch.zeros(3, 3)}),
    lambda s: s["algo"]["optimizer"].update(lr="x"),
    lambda s: s["algo"]["obs_norm"].update(mean={"__ndarray__": torch.zeros(7)}),
    lambda s: s["counters"].update(last_eval="boom"),
    lambda s: s["counters"].update(recent_returns=["x", {}]),
    lambda s: s["counters"].update(wall_seconds=float("nan")),
    lambda s: s["counters"].update(wall_seconds=10**400),
    lambda s: s["algo"]["net"].update({k: torch.full_like(v, float("nan"))
                                       for k, v in s["algo"]["net"].items()}),
    lambda s: s["env"]["state"][0][-1]["attrs"].update(steps_beyond_terminated=[0.0] * 5),
    lambda s: s["env"]["state"][0][-1]["attrs"].update(tau=10**400),
])
def test_a_malformed_checkpoint_is_one_line(finished_run, tmp_path, capsys, change):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in ("best.pt", "last.pt"):  # torch.save: the change may not survive encode
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        change(state)
        torch.save(state, run / "checkpoints" / name)
    try:  # rl-eval reads the config and the algorithm's state only: it evaluates or refuses
        rl_eval.main([f"run={run}", "episodes=1"])
    except SystemExit as e:
        assert e.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    before = sorted((p.name, p.read_bytes()) for p in run.rglob("*") if p.is_file())
    error_line(run_cli([f"resume={run}"], tmp_path))
    assert sorted((p.name, p.read_bytes()) for p in run.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("layer, attr, value", [
    (0, "_max_episode_steps", "x"),  # TimeLimit's counter as a string
    (-1, "render_mode", "human"),  # would make step() render
    (-1, "state", [1.0, 2.0]),  # a list where an array of 4 floats is
    (-1, "no_such_attribute", 1.0),
])
def test_env_state_restores_only_state_of_the_same_kind(layer, attr, value):
    envs_a, envs_b = make_vec_env("CartPole-v1", 1), make_vec_env("CartPole-v1", 1)
    envs_a.reset(seed=0)
    envs_b.reset(seed=1)
    state = env_state(envs_a)
    state[0][layer]["attrs"][attr] = value
    before = env_state(envs_b)
    with pytest.raises(ValueError):
        restore_env_state(envs_b, state)
    assert str(env_state(envs_b)) == str(before)  # nothing of the layer was changed


def test_env_state_never_sets_what_is_not_state():
    envs_a, envs_b = make_vec_env("CartPole-v1", 1), make_vec_env("CartPole-v1", 1)
    envs_a.reset(seed=0)
    envs_b.reset(seed=1)
    state = env_state(envs_a)
    state[0][-1]["attrs"]["metadata"] = {"render_modes": ["x"]}
    state[0][0]["attrs"]["_action_space"] = 7  # a wrapper's space override
    restore_env_state(envs_b, state)
    assert envs_b.envs[0].unwrapped.metadata != {"render_modes": ["x"]}
    assert envs_b.envs[0].action_space.n == 2
