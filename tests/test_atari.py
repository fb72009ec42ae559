"""Atari (env=breakout|pong|atari): ale-py's games under env.atari's preprocessing.

Training envs end an episode at a lost life (the game goes on) and clip rewards; evaluation
plays whole games with the real score; FIRE starts games that wait for it."""
from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rl_runner.atari import ATARI_DEFAULTS
from rl_runner.envs import check_env_id, game_ends, make_one, make_vec_env
from rl_runner.errors import UserError
from rl_runner.evaluation import Evaluator

pytest.importorskip("ale_py")
BREAKOUT = "BreakoutNoFrameskip-v4"
INVADERS = "SpaceInvadersNoFrameskip-v4"  # points of 5 to 30 a shot: clipping shows


class Log(gym.Wrapper):
    """Put where rl-eval puts RecordVideo (right above AtariPreprocessing): the actions and the
    rewards of the game itself."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.actions: list[int] = []
        self.rewards: list[float] = []

    def step(self, action):
        self.actions.append(int(action))
        out = self.env.step(action)
        self.rewards.append(float(out[1]))
        return out


def logged(env_id: str, training: bool, **atari) -> tuple[gym.Env, Log]:
    logs: list[Log] = []
    env = make_one(env_id, {}, {**atari}, training,
                   record=lambda e: logs.append(Log(e)) or logs[-1])
    return env, logs[0]


def lives(env: gym.Env) -> int:
    return env.unwrapped.ale.lives()


@pytest.mark.parametrize("training", [True, False])
def test_observations_are_four_stacked_84x84_grey_frames(training):
    envs = make_vec_env(BREAKOUT, 2, {}, atari={}, training=training)
    assert envs.single_observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step(np.array([1, 2]))
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert obs[:, -1].std() > 0  # the newest frame is a picture, not padding
    envs.close()


def test_colour_frames_stack_channels_first():
    env = make_one("ALE/Pong-v5", {}, {"grayscale": False, "frame_stack": 2}, False)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == obs.shape == (6, 84, 84)
    env.close()


def test_v5_ids_are_made_without_their_own_frameskip():
    env = make_one("ALE/Breakout-v5", {}, {}, True)
    assert env.unwrapped._frameskip == 1  # AtariPreprocessing skips 4: 4, not 16 frames a step
    env.close()


def test_a_lost_life_ends_a_training_episode_but_not_the_game():
    env, log = logged(BREAKOUT, training=True)
    env.reset(seed=1)
    assert lives(env) == 5
    terminated = False
    while not terminated:
        _, _, terminated, truncated, info = env.step(0)  # never moves: the ball is lost
        assert not truncated
    assert lives(env) == 4 and "episode" not in info  # the game goes on
    frames = env.unwrapped.ale.getEpisodeFrameNumber()
    log.actions.clear()
    env.reset()
    assert lives(env) == 4 and env.unwrapped.ale.getEpisodeFrameNumber() > frames
    assert log.actions == [0, 1]  # a no-op step instead of a reset, then FIRE
    env.close()


def test_evaluation_plays_whole_games_and_fires_after_each_lost_life():
    env, log = logged(BREAKOUT, training=False)
    env.reset(seed=1)
    assert log.actions == [1]  # FIRE on reset
    seen, done = set(), False
    while not done:
        seen.add(lives(env))
        _, _, terminated, truncated, _ = env.step(0)
        done = terminated or truncated
    assert seen == {1, 2, 3, 4, 5} and lives(env) == 0
    assert log.actions.count(1) == 5  # FIRE at the start and after each of 4 lost lives
    env.close()


def test_fire_reset_false_presses_nothing():
    env, log = logged(BREAKOUT, training=False, fire_reset=False)
    env.reset(seed=1)
    assert log.actions == []
    env.close()


def test_rewards_are_clipped_in_training_only_and_episode_stats_keep_the_real_score():
    train, train_log = logged(INVADERS, training=True)
    evaluate, eval_log = logged(INVADERS, training=False)
    rng = np.random.default_rng(0)
    train.reset(seed=3)
    evaluate.reset(seed=3)
    clipped, real = [], []
    while lives(train) == 3:  # the same game in both until the first lost life
        action = rng.integers(6)
        clipped.append(train.step(action)[1])
        real.append(evaluate.step(action)[1])
    assert max(real) > 1 and set(clipped) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(np.sign(real), clipped)
    # a whole training game: info["episode"] holds its unclipped score (rl_runner/atari.py)
    info, total = {}, 0.0
    while "episode" not in info:
        _, reward, terminated, truncated, info = train.step(rng.integers(6))
        total += reward
        if (terminated or truncated) and "episode" not in info:
            train.reset()
    assert info["episode"]["r"] == pytest.approx(sum(train_log.rewards)) and lives(train) == 0
    assert info["episode"]["r"] > total + sum(clipped)
    train.close()
    evaluate.close()


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_game_ends_reports_whole_games_of_training_envs_with_the_real_score(vectorization):
    envs = make_vec_env(INVADERS, 2, {}, vectorization, atari={}, training=True)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    lives_lost, games, clipped = 0, [], np.zeros(2)
    while len(games) < 2:
        _, rewards, terminated, truncated, info = envs.step(rng.integers(6, size=2))
        clipped += rewards
        ended = game_ends(envs, info)
        lives_lost += int((terminated | truncated).sum()) - len(ended)
        games += ended
    envs.close()
    assert lives_lost >= 2 * 2  # 3 lives a game: episodes ended between the games' ends
    for i, score, length in games:
        assert score % 5 == 0 and score > clipped[i] and length > 0
    assert game_ends(make_vec_env("CartPole-v1", 1), {}) is None  # episodes are its games


def test_the_evaluator_plays_whole_games_with_the_real_score():
    ev = Evaluator(INVADERS, 1, seed=5, atari={"episodic_life": True, "clip_reward": True})
    seen = []
    rng = np.random.default_rng(0)

    def policy(obs):
        seen.append(lives(ev.envs.envs[0]))
        return rng.integers(6, size=len(obs))

    result = ev.run(policy)
    ev.close()
    assert result["episodes"] == 1 and set(seen) == {1, 2, 3}
    assert result["return_mean"] > 1 and result["return_mean"] % 5 == 0  # invaders' points


def test_ale_ids_register_on_first_use():
    code = ("import gymnasium, sys; from rl_runner.envs import check_env_id; "
            "assert 'ALE/Pong-v5' not in gymnasium.registry and 'ale_py' not in sys.modules; "
            "check_env_id('ALE/Pong-v5'); check_env_id('PongNoFrameskip-v4')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_an_atari_id_without_ale_py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py fails
    with pytest.raises(UserError, match=r"pip install 'rl-runner\[atari\]'"):
        check_env_id("ALE/NoSuchGame-v5")
    with pytest.raises(UserError, match="not a registered") as e:
        check_env_id("CartPol-v1")  # a typo is not an Atari game
    assert "atari" not in str(e.value)


def test_atari_preprocessing_on_another_env_is_refused():
    with pytest.raises(UserError, match="env.atari.*not an Atari game"):
        make_vec_env("CartPole-v1", 1, atari={})


# ---- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["env=breakout", "+env.atari.sticky=1"], "env.atari.sticky is not an Atari preprocessing "
                                              "key; allowed: " + ", ".join(ATARI_DEFAULTS)),
    (["env=breakout", "env.atari.fram_skip=2"], "did you mean env.atari.frame_skip"),
    (["env=pong", "env.atari.frame_skip=0"], "env.atari.frame_skip=0 must lie in [1, 64]"),
    (["env=pong", "env.atari.grayscale=3"], "env.atari.grayscale=3"),
    (["env=pong", "env.atari=5"], "must be a mapping"),
    (["env=atari"], "env=atari needs env.id="),
    (["env=cartpole", "+env.atari={}"], "not an Atari game"),
    # sizes that would exhaust memory or never start, and base envs the wrappers cannot take
    (["env=breakout", "env.atari.screen_size=100000"], "must lie in [8, 512]"),
    (["env=breakout", "env.atari.noop_max=1000000000"], "must lie in [0, 1000]"),
    (["env=breakout", "+env.kwargs.obs_type=ram"], "allowed with it: rgb, grayscale"),
    (["env=breakout", "+env.kwargs.frameskip=4"], "env.atari skips frames itself"),
])
def test_bad_atari_settings_are_one_line_and_exit_2(refused_in_process, tmp_path, args, says):
    line = refused_in_process([*args, "trainer.total_steps=64", f"hydra.run.dir={tmp_path}/r"])
    assert says in line, line


class RandomActor:
    """Just enough of an on-policy algorithm for the RolloutCollector: uniform actions."""

    def __init__(self, n_actions: int):
        self.rng, self.n_actions = np.random.default_rng(0), n_actions

    def explore(self, obs):
        a = self.rng.integers(self.n_actions, size=len(obs))
        zeros = np.zeros(len(obs), np.float32)
        return a, a, zeros, zeros, obs

    def value(self, obs):
        return np.zeros(len(obs), np.float32)


def test_training_curves_report_whole_games_with_the_real_score():
    """charts/episodic_return on Atari: the feeder reports games, not lives, and unclipped
    points (SpaceInvaders scores 5 to 30 a shot; its training rewards are clipped to 1)."""
    from rl_runner.rollout import RolloutCollector

    envs = make_vec_env(INVADERS, 2, {}, atari={}, training=True)
    feeder = RolloutCollector(envs, 256, seed=0)
    episodes: list = []
    lives_ended = 0
    while len(episodes) < 2:
        rollout, ended = feeder.collect(RandomActor(6))
        assert rollout.rewards.max() <= 1.0  # what the learner sees stays clipped
        lives_ended += int(rollout.dones.sum())
        episodes += ended
    envs.close()
    assert lives_ended >= 3 * len(episodes)  # 3 lives a game: games are reported, not lives
    assert all(ret % 5 == 0 and ret >= 5 for _, ret, _ in episodes)
    assert max(ret for _, ret, _ in episodes) > 5  # one clipped reward per shot would be 1, 2..
