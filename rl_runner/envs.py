"""Environment construction and id checks (env state for resume: rl_runner/envstate.py)."""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium.error import DependencyNotInstalled
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from rl_runner import envpool_env
from rl_runner.atari import base_kwargs, is_ale, looks_atari, register_ale, wrap_atari
from rl_runner.config import atari_options, to_plain
from rl_runner.errors import UserError, one_line
from rl_runner.sync_env import FastSyncVectorEnv

ATARI_EXTRA = "pip install 'rl-runner[atari]'"
log = logging.getLogger("rl_runner")


def env_options(env_cfg: Any) -> dict:
    """What make_vec_env, make_one and Evaluator take from a config's env node besides the id:
    env.kwargs and env.atari (absent in configs written before it: no preprocessing)."""
    return {"kwargs": to_plain(env_cfg.get("kwargs")) or {},
            "atari": to_plain(env_cfg.get("atari"))}


def check_env_id(env_id: str) -> None:
    """Fail with one line (and close matches) when `env_id` is not a registered gymnasium id.

    `module:EnvId` imports the module first (it registers the env), as gymnasium.make does.
    """
    if ":" in str(env_id):
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"env.id: cannot import module {module!r} ({e})") from None
    if env_id in gym.registry or (register_ale() and env_id in gym.registry):
        return
    if looks_atari(str(env_id)) and not register_ale():
        raise UserError(f"env.id={env_id} is an Atari game, and ale-py (which ships the games) "
                        f"is not installed: {ATARI_EXTRA}")
    close = difflib.get_close_matches(str(env_id), list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else \
        "; pass a registered gymnasium id (python -c 'import gymnasium; gymnasium.pprint_registry()')"
    raise UserError(f"env.id={env_id!r} is not a registered gymnasium environment{hint}")


def log_mujoco_warnings() -> None:
    """MuJoCo appends its warnings to MUJOCO_LOG.TXT in the working directory (HalfCheetah-v5's
    model gives a deprecation warning at every load): send them to the debug log instead."""
    import mujoco

    mujoco.set_mju_user_warning(lambda message: log.debug("mujoco: %s", message))


def make_one(env_id: str, kwargs: dict, atari: dict | None = None, training: bool = False,
             record: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
    """One env: env.atari's preprocessing on an Atari game (`training`: lives end episodes and
    rewards are clipped, else whole games and the real score); `record` wraps the env that
    draws the real game (rl-eval's RecordVideo)."""
    options = atari_options(atari)
    if env_id not in gym.registry:  # a fresh worker process (spawn), an unchecked caller
        register_ale()
    if options is not None and not is_ale(env_id.split(":")[-1]):
        raise UserError(f"env.atari is Atari preprocessing, and env.id={env_id} is not an Atari "
                        "game; set env.atari=null")
    if env_id in gym.registry and str(gym.spec(env_id).entry_point).startswith(
            "gymnasium.envs.mujoco"):
        log_mujoco_warnings()
    env = gym.make(env_id, **base_kwargs(env_id.split(":")[-1], kwargs, options))
    if options is not None:
        return wrap_atari(env, options, training, record)
    if record is not None:
        env = record(env)
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)  # e.g. Discrete observations become one-hot
    return env


class _EnvFn:
    """A picklable env factory (AsyncVectorEnv sends it to worker processes)."""

    def __init__(self, env_id: str, kwargs: dict, atari: dict | None, training: bool):
        self.env_id, self.kwargs, self.atari, self.training = env_id, kwargs, atari, training

    def __call__(self) -> gym.Env:
        return make_one(self.env_id, self.kwargs, self.atari, self.training)


def make_vec_env(env_id: str, n_envs: int, kwargs: dict | None = None,
                 vectorization: str = "sync", atari: dict | None = None,
                 training: bool = False, threads: int = 1,
                 envpool_async: bool | str = False) -> gym.vector.VectorEnv:
    """n copies of an env; finished episodes reset in the same step (final obs in info).
    `atari`, `training`: see make_one (the trainer's envs train, the Evaluator's do not).
    vectorization: sync, async (a process per env), envpool (C++ threads, `threads` of them at
    most) or auto (envpool where it is installed and has the id, else sync); envpool_async
    (true, false, auto): only checked here (true needs envpool; the on-policy feeder overlaps
    stepping and learning)."""
    check_env_id(env_id)
    kwargs = dict(kwargs or {})
    options = atari_options(atari)
    backend = envpool_env.resolve(vectorization, env_id, options)
    try:  # surface bad kwargs as one line, not a worker crash (some fail at the first reset,
        # or at the first step: HalfCheetah's ctrl_cost_weight='abc')
        probe = make_one(env_id, kwargs, atari, training)
        try:
            probe.reset(seed=0)
            probe.action_space.seed(0)
            probe.step(probe.action_space.sample())
            spaces = probe.observation_space, probe.action_space
        finally:
            probe.close()
    except UserError:
        raise
    except Exception as e:  # a missing extra (jax, shimmy), an env that fails to start
        if isinstance(e, TypeError) and kwargs:
            raise UserError(f"env.kwargs {kwargs} rejected by {env_id}: {one_line(e, 200)}") \
                from None
        extra = missing_extra(env_id, e)
        if extra is not None:
            raise UserError(f"env.id={env_id} needs the {extra} extra, not installed here "
                            f"({type(e).__name__}): pip install 'rl-runner[{extra}]'") from None
        raise UserError(f"env.id={env_id} cannot be made here ({type(e).__name__}: "
                        f"{one_line(e, 200)})") from None
    fns = [_EnvFn(env_id, kwargs, atari, training) for _ in range(n_envs)]
    envs, why_not = None, ""
    if backend == "envpool":
        try:
            envs = envpool_env.EnvPoolVectorEnv(env_id, n_envs, kwargs, options, training,
                                                *spaces, threads=threads)
        except envpool_env.Unfit as e:  # EnvPool has the id, not these settings or spaces
            if vectorization != "auto":
                raise
            backend, why_not = "sync", f" ({e.reason})"
    if envpool_async is True and backend != "envpool":
        raise UserError(f"env.envpool_async=true steps EnvPool's envs, and env.vectorization="
                        f"{vectorization} gives {backend} here{why_not}; allowed with it: "
                        "envpool (or auto where EnvPool takes the id and its settings)")
    if why_not:
        log.info("env.vectorization=auto: sync, not envpool, for %s%s", env_id, why_not)
    if backend == "async":
        envs = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    elif backend == "sync":
        # copy=False: the feeder copies observations into its own buffers anyway
        envs = FastSyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    envs.whole_games = atari is not None  # game_ends below
    envs.backend = backend  # what env.vectorization gave: the start line names it
    return envs


def game_ends(envs: gym.vector.VectorEnv, info: dict) -> list[tuple[int, float, int]] | None:
    """On Atari (env.atari set), the whole games that ended this step: (env index, real score,
    length in agent steps, FIRE and no-op steps of the wrappers included), from the
    RecordEpisodeStatistics under the life and reward wrappers (rl_runner/atari.py). None for
    other envs, whose episodes are the sums of their step rewards."""
    if not getattr(envs, "whole_games", False):
        return None
    final = info.get("final_info", {})  # SAME_STEP autoreset: the ended episodes' infos
    if "episode" not in final:
        return []
    stats = final["episode"]
    return [(int(i), float(stats["r"][i]), int(stats["l"][i]))
            for i in np.flatnonzero(final["_episode"])]


# the modules each extra installs for its envs (pyproject.toml)
EXTRA_MODULES = {"mujoco": ("mujoco",), "atari": ("ale_py", "cv2")}


def missing_extra(env_id: str, error: Exception) -> str | None:
    """'mujoco' or 'atari' where a make failed for want of that extra's packages; None where
    they import (Pusher-v4 wants mujoco < 3, which the extra does not install: that error's own
    words say so)."""
    if not isinstance(error, (ImportError, DependencyNotInstalled)):
        return None
    entry = str(gym.spec(env_id.split(":")[-1]).entry_point)
    extra = ("mujoco" if entry.startswith("gymnasium.envs.mujoco")
             else "atari" if entry.startswith("ale_py") else None)
    if extra is None or all(importlib.util.find_spec(m) for m in EXTRA_MODULES[extra]):
        return None
    return extra


def final_observations(info: dict, mask: np.ndarray) -> np.ndarray:
    """Stack the final observations of the sub-envs in `mask` (SAME_STEP autoreset info)."""
    return np.stack([info["final_obs"][i] for i in np.flatnonzero(mask)])
