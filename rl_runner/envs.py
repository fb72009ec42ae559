"""Environment construction and id checks (env state for resume: rl_runner/envstate.py)."""
from __future__ import annotations

import difflib
import importlib

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from rl_runner.errors import UserError, one_line


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
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(str(env_id), list(gym.registry), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else \
        "; pass a registered gymnasium id (python -c 'import gymnasium; gymnasium.pprint_registry()')"
    raise UserError(f"env.id={env_id!r} is not a registered gymnasium environment{hint}")


def make_one(env_id: str, kwargs: dict) -> gym.Env:
    env = gym.make(env_id, **kwargs)
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)  # e.g. Discrete observations become one-hot
    return env


class _EnvFn:
    """A picklable env factory (AsyncVectorEnv sends it to worker processes)."""

    def __init__(self, env_id: str, kwargs: dict):
        self.env_id, self.kwargs = env_id, kwargs

    def __call__(self) -> gym.Env:
        return make_one(self.env_id, self.kwargs)


def make_vec_env(env_id: str, n_envs: int, kwargs: dict | None = None,
                 vectorization: str = "sync") -> gym.vector.VectorEnv:
    """n copies of an env; finished episodes reset in the same step (final obs in info)."""
    check_env_id(env_id)
    kwargs = dict(kwargs or {})
    try:
        make_one(env_id, kwargs).close()  # surface bad kwargs as one line, not a worker crash
    except TypeError as e:
        raise UserError(f"env.kwargs {kwargs} rejected by {env_id}: {e}") from None
    except UserError:
        raise
    except Exception as e:  # a missing extra (jax, shimmy), an env that fails to start
        raise UserError(f"env.id={env_id} cannot be made here ({type(e).__name__}: "
                        f"{one_line(e, 200)})") from None
    fns = [_EnvFn(env_id, kwargs) for _ in range(n_envs)]
    if vectorization == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    if vectorization != "sync":
        raise UserError(f"env.vectorization={vectorization!r} is not known; allowed: sync, async")
    # copy=False: the feeder copies observations into its own buffers anyway
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, copy=False)


def final_observations(info: dict, mask: np.ndarray) -> np.ndarray:
    """Stack the final observations of the sub-envs in `mask` (SAME_STEP autoreset info)."""
    return np.stack([info["final_obs"][i] for i in np.flatnonzero(mask)])
