"""rl-eval: a checkpoint evaluated again gives the run's own numbers; eval.json; video; errors."""
from __future__ import annotations

import json
import os
import types

import gymnasium as gym
import numpy as np
import pytest

from rl_runner.errors import UserError
from rl_runner.rl_eval import main, record
from tests.conftest import tool_error


def exit_line(capsys, argv: list[str]) -> str:
    return tool_error(capsys, main, argv, "rl-eval")


def test_best_checkpoint_gives_the_runs_best_eval_and_eval_json_keeps_earlier(cartpole_run,
                                                                              capsys):
    run = cartpole_run
    results = json.loads((run / "results.json").read_text())
    main([f"run={run}", "episodes=2"])  # the trainer evaluated 2 episodes from seed + 10000
    first = json.loads((run / "eval.json").read_text())
    assert first["return_mean"] == pytest.approx(results["best_eval_return_mean"])
    assert first["episodes"] == 2 and first["checkpoint"].endswith("best.pt")
    assert first["previous"] == []
    assert "return" in capsys.readouterr().out
    main([f"run={run}", "checkpoint=last", "episodes=3", "seed=5"])
    second = json.loads((run / "eval.json").read_text())
    assert second["episodes"] == 3 and second["seed"] == 5
    assert second["checkpoint"].endswith("last.pt")
    assert second["previous"] == [{k: v for k, v in first.items() if k != "previous"}]


def test_video_frames_read_back_and_numbers_match_a_run_without_video(cartpole_run):
    run = cartpole_run
    main([f"run={run}", "episodes=2", "video=true"])
    result = json.loads((run / "eval.json").read_text())
    main([f"run={run}", "episodes=2"])
    plain = json.loads((run / "eval.json").read_text())
    assert result["return_mean"] == plain["return_mean"]
    assert len(result["videos"]) == 2
    from moviepy import VideoFileClip

    with VideoFileClip(result["videos"][0]) as clip:
        frames = list(clip.iter_frames())
    assert frames[0].shape == (400, 600, 3)  # CartPole's rgb_array frame
    assert len(frames) >= 10
    assert np.ptp(np.stack(frames).astype(np.float32)) > 0  # not a blank picture


def test_no_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = exit_line(capsys, [f"run={tmp_path / 'empty'}"])
    assert "no checkpoint" in line and str(tmp_path / "empty") in line
    assert "no such run directory" in exit_line(capsys, [f"run={tmp_path / 'nope'}"])


def test_another_runs_checkpoint_is_refused_and_nothing_is_written(cartpole_run, tmp_path,
                                                                  capsys):
    """eval.json holds this run's results: a checkpoint from elsewhere (another run, a copy)
    is one line, and the run's eval.json stays as it was."""
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    copy = other / "checkpoints" / "best.pt"
    copy.write_bytes((cartpole_run / "checkpoints" / "best.pt").read_bytes())
    before = (cartpole_run / "eval.json").read_bytes() if (cartpole_run / "eval.json").exists() \
        else None
    dotted = cartpole_run / os.path.relpath(copy, cartpole_run)  # starts with the run's path
    for checkpoint in (copy, dotted):
        line = exit_line(capsys, [f"run={cartpole_run}", f"checkpoint={checkpoint}",
                                  "episodes=1"])
        assert "is not in run=" in line and "allowed: best, last" in line, line
    after = (cartpole_run / "eval.json").read_bytes() if (cartpole_run / "eval.json").exists() \
        else None
    assert after == before
    main([f"run={other}", f"checkpoint={copy}", "episodes=1"])  # inside its own run: fine
    assert json.loads((other / "eval.json").read_text())["checkpoint"] == str(copy)
    linked = tmp_path / "linked"  # a run whose checkpoints/ is a symlink to other storage
    linked.mkdir()
    (linked / "checkpoints").symlink_to(other / "checkpoints")
    main([f"run={linked}", f"checkpoint={linked / 'checkpoints' / 'best.pt'}", "episodes=1"])
    assert (linked / "eval.json").is_file()


@pytest.mark.parametrize("argv, says", [(["episodes=3"], "run=<run directory> is required"),
                                        (["run=x", "episode=3"], "unknown key 'episode'"),
                                        (["run=x", "episodes=many"], "wrong type"),
                                        (["run=x", "video"], "not KEY=VALUE")])
def test_bad_arguments_are_one_line_and_exit_2(argv, says, capsys):
    assert says in exit_line(capsys, argv)


class NoFrames(gym.Env):
    """An env without an rgb_array render mode."""
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode


@pytest.mark.filterwarnings("ignore:.*render_mode=.rgb_array. that is not in the possible")
def test_an_env_that_cannot_render_is_a_clear_error(tmp_path):
    gym.register("NoFrames-v0", entry_point=NoFrames)
    policy = types.SimpleNamespace(env_id="NoFrames-v0", env_kwargs={},
                                   env_options={"kwargs": {}, "atari": None},
                                   checkpoint=tmp_path / "best.pt")
    with pytest.raises(UserError, match="NoFrames-v0 cannot render rgb_array"):
        record(policy, tmp_path / "videos", 1, 0, True)
    assert not (tmp_path / "videos").exists()


def test_an_atari_video_shows_whole_games_in_colour_with_the_real_score(tmp_path):
    """The recording path rl-eval video=true takes, with a policy that never moves (FIRE after
    each lost life is the wrappers'); its score is the evaluator's for the same seed."""
    pytest.importorskip("ale_py")
    from moviepy import VideoFileClip

    from rl_runner.evaluation import Evaluator

    def noop(obs, deterministic=True):
        assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8  # what the policy sees
        return np.zeros(len(obs), np.int64)

    atari = {"frame_skip": 4, "episodic_life": True, "clip_reward": True}  # training-only keys
    policy = types.SimpleNamespace(env_id="BreakoutNoFrameskip-v4", env_kwargs={},
                                   env_options={"kwargs": {}, "atari": atari}, act=noop,
                                   checkpoint=tmp_path / "best.pt")
    result, videos = record(policy, tmp_path / "videos", 1, 7, True)
    evaluator = Evaluator("BreakoutNoFrameskip-v4", 1, 7, atari=atari)
    plain = evaluator.run(noop)
    evaluator.close()
    assert result["return_mean"] == plain["return_mean"]
    assert result["length_mean"] == plain["length_mean"] > 50  # five lives, not one
    assert len(videos) == 1
    with VideoFileClip(videos[0]) as clip:
        assert clip.fps == 15  # one frame per agent step, 4 game frames each: the game's speed
        frames = np.stack(list(clip.iter_frames()))
    assert frames.shape[1:] == (210, 160, 3)  # the game's own screen, not the 84x84 grey input
    assert len(frames) >= result["length_mean"]
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2]).max() > 50  # in colour
