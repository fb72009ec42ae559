"""Atari preprocessing (env.atari): gymnasium's wrappers, plus the two it lacks.

The stack, innermost first, follows the DQN paper and the RL Zoo's AtariWrapper:
ale-py's env with frameskip=1 -> AtariPreprocessing (random no-op starts, frame skip with a max
over the last two frames, resize, grayscale) -> RecordEpisodeStatistics (whole games, real
score) -> EpisodicLife (training: a lost life ends the episode) -> FireReset -> reward sign
(training) -> FrameStackObservation. Evaluation plays whole games with the real score.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable

import gymnasium as gym
import numpy as np

from rl_runner.errors import UserError
from rl_runner.params import Range

# the keys of env.atari, their types and defaults (the DQN / RL Zoo settings)
# (bounded: a 100000-pixel screen or a billion no-ops would exhaust memory or never start)
ATARI_TYPES: dict[str, Any] = {
    "noop_max": Annotated[int, Range(0, 1000)], "frame_skip": Annotated[int, Range(1, 64)],
    "screen_size": Annotated[int, Range(8, 512)], "grayscale": bool,
    "frame_stack": Annotated[int, Range(1, 64)], "episodic_life": bool, "fire_reset": bool,
    "clip_reward": bool}
ATARI_DEFAULTS = {"noop_max": 30, "frame_skip": 4, "screen_size": 84, "grayscale": True,
                  "frame_stack": 4, "episodic_life": True, "fire_reset": True,
                  "clip_reward": True}
FIRE = 1  # ALE's minimal action sets put FIRE second wherever a game has it
ATARI_FPS = 60  # the console draws 60 frames a second; videos play at that speed


def register_ale() -> bool:
    """Register ale-py's Atari ids with gymnasium, where ale-py is installed."""
    try:
        import ale_py
    except ImportError:
        return False
    # errors only: its banner ("A.L.E: ...", "[Powered by Stella]") at the first game would
    # stand before a bad input's one line
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gym.register_envs(ale_py)
    return True


def is_ale(env_id: str) -> bool:
    """Whether a registered id is one of ale-py's Atari games."""
    spec = gym.spec(env_id)
    return str(spec.entry_point).startswith("ale_py")


def looks_atari(env_id: str) -> bool:
    """An unregistered id that names an ale-py game (ale-py missing), not a typo of another env."""
    return env_id.startswith("ALE/") or any(
        tag in env_id for tag in ("NoFrameskip", "Deterministic", "-ram"))


def base_kwargs(env_id: str, kwargs: dict, options: dict | None) -> dict:
    """AtariPreprocessing skips frames itself: the base env must not (v5 and v4 ids skip), and
    it takes the screen, not the RAM."""
    if options is None or not is_ale(env_id):
        return kwargs
    if kwargs.get("obs_type", "rgb") not in ("rgb", "grayscale"):
        raise UserError(f"env.kwargs.obs_type={kwargs['obs_type']!r}: env.atari preprocesses "
                        "screen frames; allowed with it: rgb, grayscale (or set env.atari=null)")
    if kwargs.get("frameskip", 1) != 1:
        raise UserError(f"env.kwargs.frameskip={kwargs['frameskip']!r}: env.atari skips frames "
                        "itself (env.atari.frame_skip); allowed with it: 1 (or set "
                        "env.atari=null)")
    return {**kwargs, "frameskip": 1}


def wrap_atari(env: gym.Env, options: dict, training: bool,
               record: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
    """The preprocessing stack on an ale-py env made with frameskip=1. `record` wraps the
    env right above AtariPreprocessing (a RecordVideo: it renders the base env's colour frames
    once per agent step, whole games)."""
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=options["noop_max"], frame_skip=options["frame_skip"],
        screen_size=options["screen_size"], grayscale_obs=options["grayscale"])
    if record is not None:
        env = record(env)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # info["episode"]: whole games, real score
    if training and options["episodic_life"]:
        env = EpisodicLife(env)
    if options["fire_reset"] and needs_fire(env):
        env = FireReset(env)
    if training and options["clip_reward"]:
        env = gym.wrappers.TransformReward(env, np.sign)
    env = gym.wrappers.FrameStackObservation(env, options["frame_stack"])
    if not options["grayscale"]:  # (stack, H, W, 3) -> (stack * 3, H, W): one image, channels first
        env = channels_first(env)
    return env


def lives(env: gym.Env) -> int:
    return int(env.unwrapped.ale.lives())


def needs_fire(env: gym.Env) -> bool:
    return "FIRE" in env.unwrapped.get_action_meanings()[FIRE:FIRE + 1]


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode (the agent learns that dying is bad) while the game goes on:
    the next reset only takes a no-op step, unless the game is really over. For training only."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        now = lives(self.env)
        if 0 < now < self.lives:
            terminated = True
        self.lives = now
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:  # the same game, next life
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # it ended on that very step
                obs, info = self.env.reset(seed=seed, options=options)
        self.game_over = False
        self.lives = lives(self.env)
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE after a reset and after each lost life that does not end the episode: games
    such as Breakout wait for it, and a policy that never fires would stall them."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, info = self.env.step(FIRE)
        if terminated or truncated:
            obs, info = self.env.reset(seed=seed, options=options)
        self.lives = lives(self.env)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        now = lives(self.env)
        if now < self.lives and not (terminated or truncated):
            obs, more, terminated, truncated, info = self.env.step(FIRE)
            reward += more
        self.lives = lives(self.env)
        return obs, reward, terminated, truncated, info


def channels_first(env: gym.Env) -> gym.Env:
    """Colour frames stacked (N, H, W, 3) as one channels-first image (N * 3, H, W)."""
    n, h, w, c = env.observation_space.shape
    space = gym.spaces.Box(0, 255, (n * c, h, w), np.uint8)
    return gym.wrappers.TransformObservation(
        env, lambda obs: np.ascontiguousarray(np.moveaxis(obs, 3, 1).reshape(n * c, h, w)), space)
