"""Checks of the composed config: one clear line per bad value, before any work starts."""
from __future__ import annotations

import inspect
import math
import os
import types
import typing
from importlib import resources
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rl_runner.errors import UserError, one_line

if TYPE_CHECKING:  # gymnasium is only needed on the error path; keep `rl-run --help` light
    import gymnasium as gym

POSITIVE = {"flush_secs", "total_steps", "n_envs", "n_steps", "batch_size", "n_epochs", "eval_episodes",
            "torch_threads", "buffer_size", "gradient_steps", "train_freq", "expert_episodes"}
NON_NEGATIVE = {"lr", "ent_coef", "vf_coef", "eval_every", "checkpoint_every", "learning_starts",
                "max_grad_norm", "value_epochs", "kl_target", "kl_beta", "clip_coef",
                "expert_noise"}
POSITIVE_ITEMS = {"hidden_sizes"}  # lists whose every entry must be positive
UNIT_INTERVAL = {"gamma", "gae_lambda", "tau", "expert_epsilon"}
SEED_MAX = 2**32 - 1 - 50_000
MAX_ENVS = 4096  # gymnasium's vector envs, one Python object each: beyond this, a typo
TRAINER_TYPES = {"total_steps": int, "eval_every": int, "eval_episodes": int,
                 "checkpoint_every": int, "torch_threads": int | str, "device": str,
                 "save_replay_buffer": bool, "progress": bool, "fail_fast": bool}


def group_choices(group: str) -> list[str]:
    """The YAML files of a config group in the bundled conf package."""
    root = resources.files("rl_runner.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def algos_supporting(action_space: gym.Space) -> list[str]:
    """The bundled algo choices whose class can handle `action_space`."""
    from hydra.utils import get_class

    able = []
    for name in group_choices("algo"):
        target = OmegaConf.load(resources.files("rl_runner.conf") / "algo" / f"{name}.yaml")
        if get_class(target._target_).supports(action_space):
            able.append(name)
    return able


# what the trainer passes to every algorithm constructor itself (trainer.build_algo)
PROVIDED = {"observation_space", "action_space", "n_envs", "total_steps", "seed"}
TRUST_ENV = "RL_RUNNER_TRUSTED"  # module.Class names (or modules) a user trusts, comma-separated
# Hydra's instantiate keys: below algo they would build objects of any class the config names
HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}


def bundled_algo_targets() -> set[str]:
    """The algorithm classes of the bundled conf/algo/*.yaml (their `_target_`)."""
    return {str(OmegaConf.load(resources.files("rl_runner.conf") / "algo" / f"{name}.yaml")
                ._target_) for name in group_choices("algo")}


def check_no_nested_targets(algo: dict | list, where: str = "algo") -> None:
    """Refuse Hydra's instantiate keys below the algorithm's own `_target_`: a value like
    {_target_: torch.load, ...} in a hyperparameter would be called by instantiate."""
    items = algo.items() if isinstance(algo, dict) else enumerate(algo)
    for key, value in items:
        if key in HYDRA_KEYS and not (where == "algo" and key == "_target_"):
            raise UserError(f"{where}.{key}: Hydra's {key} is not allowed inside the algorithm's "
                            "hyperparameters; give plain values")
        if isinstance(value, (dict, list, tuple)):
            check_no_nested_targets(value, f"{where}.{key}")


def check_file_config(cfg: DictConfig, source: object) -> None:
    """A config read from a file someone may have handed over (a checkpoint): it may name only
    code the user chose to run. Importing a module runs it, so algo._target_ must be a bundled
    algorithm, and env.id's `module:` part is refused, unless listed in $RL_RUNNER_TRUSTED."""
    try:  # saved resolved: an interpolation in it is an edit, and must resolve like any other
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise UserError(f"{source}: its config does not resolve "
                        f"({one_line(e, 200)})") from None
    algo, env = cfg.get("algo"), cfg.get("env")
    if not (isinstance(algo, DictConfig) and isinstance(algo.get("_target_"), str)
            and isinstance(env, DictConfig) and isinstance(env.get("id"), str)):
        raise UserError(f"{source}: its config names no algo._target_ and env.id (not the "
                        "config of an rl-run)")
    trusted = {t.strip() for t in os.environ.get(TRUST_ENV, "").split(",") if t.strip()}
    target = str(cfg.algo.get("_target_"))
    if target not in bundled_algo_targets() and target not in trusted \
            and target.rsplit(".", 1)[0] not in trusted:
        raise UserError(f"{source}: names algo._target_={target!r}, which is not a bundled "
                        "algorithm, and importing it would run its module's code; if you trust "
                        f"it, run with {TRUST_ENV}={target}")
    module = str(cfg.env.get("id", "")).split(":", 1)[0] if ":" in str(cfg.env.get("id")) else None
    if module is not None and module not in trusted:
        raise UserError(f"{source}: env.id={cfg.env.id!r} imports module {module!r}, which would "
                        f"run its code; if you trust it, run with {TRUST_ENV}={module}")


def check_value(key: str, value: Any, expected: Any) -> None:
    """Raise UserError unless `value` fits the type hint `expected` and the range rules."""
    if not _fits(value, expected):
        raise UserError(f"{key}={_show(value)} has the wrong type; expected {_type_name(expected)}")
    name = key.rsplit(".", 1)[-1]
    if name in POSITIVE_ITEMS and isinstance(value, (list, tuple)):
        if any(isinstance(v, (int, float)) and v <= 0 for v in value):
            raise UserError(f"{key}={list(value)}: every entry must be positive")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value} must be a finite number")
    if name in POSITIVE and value <= 0:
        raise UserError(f"{key}={value} must be positive")
    if name in NON_NEGATIVE and value < 0:
        raise UserError(f"{key}={value} must not be negative")
    if name in UNIT_INTERVAL and not 0 <= value <= 1:
        raise UserError(f"{key}={value} must lie in [0, 1]")


def check_trainer(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.env, "id"):
        raise UserError("env=gym needs env.id=<a registered gymnasium id>, "
                        "e.g. env=gym env.id=MountainCar-v0")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (KEY=VALUE on the command line)")
    for key, value in cfg.trainer.items():
        if key not in TRAINER_TYPES:
            raise UserError(f"trainer.{key} is not a trainer key; allowed: "
                            f"{', '.join(TRAINER_TYPES)}")
        check_value(f"trainer.{key}", value, TRAINER_TYPES[key])
    if "flush_secs" in (cfg.get("logger") or {}):
        check_value("logger.flush_secs", cfg.logger.flush_secs, int)
    threads = cfg.trainer.torch_threads
    if isinstance(threads, str) and threads != "auto":
        raise UserError(f"trainer.torch_threads={threads!r} is not allowed; expected a positive "
                        "number of threads or auto")
    check_value("seed", cfg.seed, int)
    # numpy and torch take seeds in [0, 2**32); the evaluation, replay and dataset streams
    # add up to 50000 to the run's seed
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UserError(f"seed={cfg.seed} must lie in [0, {SEED_MAX}]")
    check_value("env.n_envs", cfg.env.n_envs, int)
    if cfg.env.n_envs > MAX_ENVS:
        raise UserError(f"env.n_envs={cfg.env.n_envs} is more than {MAX_ENVS} envs")
    check_value("env.id", cfg.env.id, str)
    if cfg.trainer.device != "cpu":
        raise UserError(f"trainer.device={cfg.trainer.device!r} is not supported yet; allowed: cpu "
                        "(the small networks here run faster on CPU)")


def check_algo_kwargs(name: str, cls: type, kwargs: dict[str, Any], provided: set[str]) -> None:
    """Compare algo.* values with the type hints of the algorithm's keyword-only constructor."""
    hints: dict[str, Any] = {}
    params: set[str] = set()
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        sig = inspect.signature(init)
        params |= {p for p, v in sig.parameters.items()
                   if v.kind == v.KEYWORD_ONLY and p not in provided}
        hints.update({k: v for k, v in typing.get_type_hints(init).items() if k in params})
    for key, value in kwargs.items():
        if key not in params:
            raise UserError(f"algo.{key} is not a hyperparameter of {name}; "
                            f"allowed: {', '.join(sorted(params))}")
        check_value(f"algo.{key}", value, hints.get(key, Any))


def to_plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fits(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple) or expected in (list, tuple):
        args = typing.get_args(expected)
        return isinstance(value, (list, tuple)) and all(
            _fits(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
