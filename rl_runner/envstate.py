"""The state of vectorized sub-environments as plain data, for exact resume without pickle.

Each layer of a sub-env (its wrappers, then the env itself) keeps its state in attributes: step
counters, flags, numpy arrays, a numpy Generator. Those are saved as numbers, strings, arrays and
containers of them, which a checkpoint loads with weights_only=True. On resume they are set back
onto freshly made envs of the same config, only where the attribute exists and the layer has the
same type, so a file can change values but never what code runs. An env that keeps state in any
other object (a Box2D world, MuJoCo's MjData), or in a subclass of a plain type (numpy strings:
Blackjack's cards; an enum), cannot be captured this way: None, and its episodes restart on
resume."""
from __future__ import annotations

import math
import types

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import SyncVectorEnv

# built from the constructor and config again on resume, never state
STRUCTURE = (gym.Env, gym.Space, EnvSpec, types.FunctionType, types.MethodType,
             types.BuiltinFunctionType, types.ModuleType, type)
SKIPPED_NAMES = {"_saved_kwargs", "spec", "_cached_spec", "metadata", "_metadata",
                 "_action_space", "_observation_space"}  # a wrapper's space overrides
GENERATOR = "__generator__"
BIT_GENERATORS = {"PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"}


class NotCapturable(Exception):
    """A value that is neither plain data nor part of the env's structure."""


def _capture(value):
    # exactly these types: subclasses are other objects to a checkpoint (an IntEnum is pickled,
    # and its file refused at load), and np.str_ (Blackjack's dealer card, drawn by its RNG)
    # would be a string, which the restore takes for a setting, set back only where unchanged
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return value.copy()
    if isinstance(value, np.random.Generator):
        return {GENERATOR: value.bit_generator.state}
    if type(value) in (list, tuple):
        return type(value)(_capture(v) for v in value)
    if type(value) is dict and all(type(k) in (str, int) for k in value):
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


def _restored(saved, current, name: str):
    """`saved` as the new value of an attribute that holds `current` now, where it is state of
    the same kind: a Generator's state, an array of the same shape and dtype, a number, a flag.
    Strings (an env's settings, its render mode) must be unchanged, and a value may only be set
    where None is now (state not set yet) if it is a number or an array."""
    if isinstance(saved, dict) and set(saved) == {GENERATOR}:
        state = saved[GENERATOR]
        kind = state.get("bit_generator") if isinstance(state, dict) else None
        if kind not in BIT_GENERATORS:
            raise ValueError(f"{name}: unknown bit generator {kind!r}")
        if isinstance(current, np.random.Generator) and \
                type(current.bit_generator).__name__ != kind:
            raise ValueError(f"{name}: a {kind} state for a {type(current.bit_generator).__name__}")
        rng = np.random.Generator(getattr(np.random, kind)())  # checked here, set in place later
        rng.bit_generator.state = state
        return rng
    if isinstance(saved, int) and not isinstance(saved, bool) and not -2**53 < saved < 2**53:
        raise ValueError(f"{name}: an integer out of range ({str(saved)[:20]}...)")
    if isinstance(saved, float) and not math.isfinite(saved) and not (
            isinstance(current, float) and not math.isfinite(current)):
        raise ValueError(f"{name}: {saved} where {current!r} is")
    if saved is None:  # state that was not set (yet, or any more); an env's strings are set
        if isinstance(current, str):
            raise ValueError(f"{name}: None where {current!r} is")
        return None
    if current is None:  # state not set yet: a number may come, nothing else
        if not isinstance(saved, (int, float)) or isinstance(saved, bool):
            raise ValueError(f"{name}: {type(saved).__name__} where None is")
        return saved
    if isinstance(current, np.ndarray):
        if not (isinstance(saved, np.ndarray) and saved.shape == current.shape
                and saved.dtype == current.dtype):
            raise ValueError(f"{name}: not an array of shape {current.shape} and {current.dtype}")
        return saved.copy()
    if isinstance(current, str):
        if saved != current:
            raise ValueError(f"{name}: {saved!r} is not this env's {current!r}")
        return saved
    numbers = (int, float, np.number)
    if isinstance(current, bool) or isinstance(saved, bool):
        same = isinstance(current, (bool, np.bool_)) and isinstance(saved, bool)
    elif isinstance(current, numbers):
        same = isinstance(saved, (int, float)) and not isinstance(saved, bool)
    else:  # containers
        same = type(saved) is type(current) and len(saved) == len(current)
    if not same:
        raise ValueError(f"{name}: {type(saved).__name__} where {type(current).__name__} is")
    return type(current)(saved) if isinstance(current, np.number) else saved


def restore_env_state(envs: gym.vector.VectorEnv, state: list) -> None:
    """Set `state` (from env_state) back onto envs made from the same config.

    Raises ValueError where it does not fit (another number of envs, other wrappers or types);
    everything is checked before anything is set, so a refused state leaves the envs as they
    were."""
    if not isinstance(envs, SyncVectorEnv) or not isinstance(state, list) \
            or len(state) != len(envs.envs):
        raise ValueError(f"env state for {len(state)} envs does not fit these {envs.num_envs}")
    updates = []
    for env, saved_layers in zip(envs.envs, state):
        layers = _layers(env)
        if not isinstance(saved_layers, list) or len(layers) != len(saved_layers):
            raise ValueError("the env's wrappers differ from the saved ones")
        for layer, saved in zip(layers, saved_layers):
            name = f"{type(layer).__module__}.{type(layer).__qualname__}"
            if not isinstance(saved, dict) or saved.get("type") != name:
                raise ValueError(f"saved env layer {saved.get('type')!r} is not {name!r}")
            attrs = saved.get("attrs")
            if not isinstance(attrs, dict):
                raise ValueError(f"saved env layer {name!r} holds no attributes")
            for attr, value in attrs.items():
                if attr in SKIPPED_NAMES:  # not state: built from the config, never set back
                    continue
                current = vars(layer).get(attr)
                if (attr not in vars(layer) or attr == "env"
                        or isinstance(current, STRUCTURE) or callable(current)):
                    raise ValueError(f"{name} has no state attribute {attr!r}")
                updates.append((layer, attr, _restored(value, current, f"{name}.{attr}")))
    for layer, attr, value in updates:
        current = getattr(layer, attr)
        if isinstance(current, np.random.Generator) and isinstance(value, np.random.Generator):
            current.bit_generator.state = value.bit_generator.state  # others may hold it too
        else:
            setattr(layer, attr, value)
