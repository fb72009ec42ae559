"""The state of vectorized sub-environments as plain data, for exact resume without pickle.

Each layer of a sub-env (its wrappers, then the env itself) keeps its state in attributes: step
counters, flags, numpy arrays, a numpy Generator. Those are saved as numbers, strings, arrays and
containers of them, which a checkpoint loads with weights_only=True. On resume they are set back
onto freshly made envs of the same config, only where the attribute exists and the layer has the
same type, so a file can change values but never what code runs. An env that keeps state in any
other object (a Box2D world, MuJoCo's MjData) cannot be captured this way: None, and its episodes
restart on resume."""
from __future__ import annotations

import types

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import SyncVectorEnv

# built from the constructor and config again on resume, never state
STRUCTURE = (gym.Env, gym.Space, EnvSpec, types.FunctionType, types.MethodType,
             types.BuiltinFunctionType, types.ModuleType, type)
SKIPPED_NAMES = {"_saved_kwargs", "spec", "_cached_spec", "metadata", "_metadata"}
GENERATOR = "__generator__"
BIT_GENERATORS = {"PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"}


class NotCapturable(Exception):
    """A value that is neither plain data nor part of the env's structure."""


def _capture(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return value.copy()
    if isinstance(value, np.random.Generator):
        return {GENERATOR: value.bit_generator.state}
    if isinstance(value, (list, tuple)):
        return type(value)(_capture(v) for v in value)
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {k: _capture(v) for k, v in value.items()}
    raise NotCapturable(type(value).__name__)


def _layers(env: gym.Env) -> list:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _layer_state(layer) -> dict:
    state = {}
    for name, value in vars(layer).items():
        if name in SKIPPED_NAMES or name == "env" or isinstance(value, STRUCTURE) or callable(value):
            continue
        state[name] = _capture(value)
    return {"type": f"{type(layer).__module__}.{type(layer).__qualname__}", "attrs": state}


def env_state(envs: gym.vector.VectorEnv) -> list | None:
    """Every sub-env's layers as plain data, or None where some state is not plain data."""
    if not isinstance(envs, SyncVectorEnv):  # async workers hold their envs in other processes
        return None
    try:
        return [[_layer_state(layer) for layer in _layers(env)] for env in envs.envs]
    except NotCapturable:
        return None


def _restored(saved, current):
    if isinstance(saved, dict) and set(saved) == {GENERATOR}:
        state = saved[GENERATOR]
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if name not in BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {name!r}")
        rng = current if isinstance(current, np.random.Generator) else \
            np.random.Generator(getattr(np.random, name)())
        rng.bit_generator.state = state
        return rng
    if isinstance(saved, np.ndarray):
        return saved.copy()
    return saved


def restore_env_state(envs: gym.vector.VectorEnv, state: list) -> None:
    """Set `state` (from env_state) back onto envs made from the same config.

    Raises ValueError where it does not fit (another number of envs, other wrappers or types)."""
    if not isinstance(envs, SyncVectorEnv) or len(state) != len(envs.envs):
        raise ValueError(f"env state for {len(state)} envs does not fit these {envs.num_envs}")
    for env, saved_layers in zip(envs.envs, state):
        layers = _layers(env)
        if len(layers) != len(saved_layers):
            raise ValueError("the env's wrappers differ from the saved ones")
        for layer, saved in zip(layers, saved_layers):
            name = f"{type(layer).__module__}.{type(layer).__qualname__}"
            if saved.get("type") != name:
                raise ValueError(f"saved env layer {saved.get('type')!r} is not {name!r}")
            for attr, value in saved["attrs"].items():
                current = vars(layer).get(attr)
                if attr not in vars(layer) or isinstance(current, STRUCTURE) or callable(current):
                    raise ValueError(f"{name} has no state attribute {attr!r}")
                setattr(layer, attr, _restored(value, current))
