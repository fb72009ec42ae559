"""Checks of the composed config: one clear line per bad value, before any work starts."""
from __future__ import annotations

import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from omegaconf import DictConfig, ListConfig, OmegaConf

from rl_runner.device import PATTERN as DEVICE_PATTERN, resolve_device
from rl_runner.errors import UserError, one_line
from rl_runner.params import NonNegativeInt, PositiveInt, Range

if TYPE_CHECKING:  # gymnasium is only needed on the error path; keep `rl-run --help` light
    import gymnasium as gym

SEED_MAX = 2**32 - 1 - 50_000
MAX_ENVS = 4096  # gymnasium's vector envs, one Python object each: beyond this, a typo
TRAINER_TYPES = {"total_steps": PositiveInt, "eval_every": NonNegativeInt,
                 "eval_episodes": PositiveInt, "checkpoint_every": NonNegativeInt,
                 "torch_threads": PositiveInt | Literal["auto"], "device": str,
                 "save_replay_buffer": bool, "progress": bool, "fail_fast": bool,
                 "eval_deterministic": bool}


def group_choices(group: str, searchpath: Sequence[str] = ()) -> list[str]:
    """The options of a config group: the bundled conf package's, plus those on `searchpath`
    (the command line's hydra.searchpath entries, rl_runner/searchpath.py)."""
    if not searchpath:  # the common case, without Hydra's config repository
        root = resources.files("rl_runner.conf") / group
        return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
    from rl_runner import searchpath as sp

    return sp.group_options(group, searchpath)


def algos_supporting(action_space: gym.Space,
                     searchpath: Sequence[str] | None = None) -> list[str]:
    """The algo choices whose class can handle `action_space`; `searchpath` None: the running
    job's (a plugin algorithm's class is imported only when its user put it on the path)."""
    return algos_where(lambda cls: cls.supports(action_space), searchpath)


def algos_where(test: Callable[[type], bool],
                searchpath: Sequence[str] | None = None) -> list[str]:
    """The algo choices whose class passes `test`; `searchpath` as algos_supporting's."""
    from hydra.utils import get_class

    from rl_runner import searchpath as sp

    able = []
    for name, target in sp.algo_targets(sp.current() if searchpath is None else searchpath).items():
        try:
            if test(get_class(target)):
                able.append(name)
        except Exception:  # a plugin class that does not import: not one that can
            continue
    return able


# what the trainer passes to every algorithm constructor itself (trainer.build_algo)
PROVIDED = {"observation_space", "action_space", "n_envs", "total_steps", "seed", "device"}
TRUST_ENV = "RL_RUNNER_TRUSTED"  # module.Class names (or modules) a user trusts, comma-separated
# Hydra's instantiate keys: below algo they would build objects of any class the config names
HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_recursive_", "_convert_"}


def bundled_algo_targets(searchpath: Sequence[str] = ()) -> set[str]:
    """The algorithm classes (`_target_`) of the bundled conf/algo/*.yaml, plus those of the
    algo YAMLs on `searchpath`."""
    from rl_runner.searchpath import algo_targets

    return set(algo_targets(searchpath).values())


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


def check_file_config(cfg: DictConfig, source: object, searchpath: Sequence[str] = ()) -> None:
    """A config read from a file someone may have handed over (a checkpoint): it may name only
    code the user chose to run. Importing a module runs it, so algo._target_ must be a bundled
    algorithm or one whose YAML is on `searchpath` (rl-run's hydra.searchpath, typed by the user
    on this command line), and env.id's `module:` part is refused, unless listed in
    $RL_RUNNER_TRUSTED."""
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
    if target not in bundled_algo_targets(searchpath) and target not in trusted \
            and target.rsplit(".", 1)[0] not in trusted:
        raise UserError(f"{source}: names algo._target_={target!r}, which is not a bundled "
                        "algorithm, and importing it would run its module's code; if you trust "
                        f"it, run with {TRUST_ENV}={target} (rl-run resume=: or give the "
                        "hydra.searchpath=[...] that holds its algo YAML)")
    module = str(cfg.env.get("id", "")).split(":", 1)[0] if ":" in str(cfg.env.get("id")) else None
    if module is not None and module not in trusted:
        raise UserError(f"{source}: env.id={cfg.env.id!r} imports module {module!r}, which would "
                        f"run its code; if you trust it, run with {TRUST_ENV}={module}")


def atari_options(raw: dict | None) -> dict | None:
    """env.atari checked and completed with the defaults; None (no preprocessing) stays None."""
    from rl_runner.atari import ATARI_DEFAULTS, ATARI_TYPES  # gymnasium only when asked

    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError(f"env.atari={raw!r} must be a mapping of {', '.join(ATARI_TYPES)} "
                        "(or null: no Atari preprocessing)")
    for key, value in raw.items():
        if key not in ATARI_TYPES:
            raise UserError(f"env.atari.{key} is not an Atari preprocessing key; allowed: "
                            f"{', '.join(ATARI_TYPES)}")
        check_value(f"env.atari.{key}", value, ATARI_TYPES[key])
    return {**ATARI_DEFAULTS, **raw}


def check_value(key: str, value: Any, expected: Any) -> None:
    """Raise UserError unless `value` fits the type hint `expected`: its type, the choices of a
    Literal, the Range of an Annotated hint (rl_runner/params.py), every entry of a list."""
    problem = _problem(value, expected)
    if problem is not None:
        raise UserError(f"{key}={_show(value)} {problem}")


def check_trainer(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.env, "id"):
        if cfg.env.get("name") == "atari":
            raise UserError("env=atari needs env.id=<an Atari game's id>, e.g. env=atari "
                            "env.id=ALE/Seaquest-v5 or env.id=SeaquestNoFrameskip-v4")
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
    check_value("seed", cfg.seed, int)
    # numpy and torch take seeds in [0, 2**32); the evaluation, replay and dataset streams
    # add up to 50000 to the run's seed
    if not 0 <= cfg.seed <= SEED_MAX:
        raise UserError(f"seed={cfg.seed} must lie in [0, {SEED_MAX}]")
    check_value("env.n_envs", cfg.env.n_envs, PositiveInt)
    if cfg.env.n_envs > MAX_ENVS:
        raise UserError(f"env.n_envs={cfg.env.n_envs} is more than {MAX_ENVS} envs")
    check_value("env.id", cfg.env.id, str)
    check_value("env.vectorization", cfg.env.get("vectorization", "sync"),
                Literal["sync", "async", "envpool", "auto"])
    check_value("env.envpool_async", cfg.env.get("envpool_async", False),
                bool | Literal["auto"])
    if cfg.env.get("atari") is not None:  # absent in configs saved before env.atari existed
        atari_options(to_plain(cfg.env.atari))
    if not DEVICE_PATTERN.match(str(cfg.trainer.device)):
        raise UserError(f"trainer.device={cfg.trainer.device!r} is not known; allowed: auto, cpu, "
                        "cuda, cuda:N")
    if str(cfg.trainer.device) != "auto":  # a GPU not here: refused before Hydra makes a run
        resolve_device(str(cfg.trainer.device))  # dir, and a resume before it locks the run


def algo_keys(cls: type, provided: set[str] = PROVIDED) -> set[str]:
    """The keyword-only constructor parameters of `cls` and its bases, less what the trainer
    provides and the base keys the class sets itself (fixed_keys): the algo.* keys a user may
    set."""
    params: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            params |= {p for p, v in inspect.signature(init).parameters.items()
                       if v.kind == v.KEYWORD_ONLY}
    return params - provided - set(getattr(cls, "fixed_keys", ()))


def check_algo_kwargs(name: str, cls: type, kwargs: dict[str, Any], provided: set[str],
                      prefix: str = "algo.") -> None:
    """Compare algo.* values (`prefix`: where they sit in the config) with the type hints of
    the algorithm's keyword-only constructor."""
    hints: dict[str, Any] = {}
    params = algo_keys(cls, provided)
    for klass in reversed(cls.__mro__):  # a subclass's hint of a key wins over its base's
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            declared = typing.get_type_hints(init, include_extras=True)
        except Exception as e:  # a hint naming something that does not exist
            raise UserError(f"{name}: the type hints of {klass.__qualname__}.__init__ cannot be "
                            f"read ({one_line(e)})") from None
        hints.update({k: v for k, v in declared.items() if k in params})
    unhinted = sorted(params - set(hints))
    if unhinted:  # the checks below read the hints: a parameter without one would go unchecked
        raise UserError(f"{name}: its constructor does not declare the type of "
                        f"{', '.join(unhinted)}; give each hyperparameter a type hint "
                        "(rl_runner/params.py has ranges and choices)")
    for key, value in kwargs.items():
        if key not in params:
            raise UserError(f"{prefix}{key} is not a hyperparameter of {name}; "
                            f"allowed: {', '.join(sorted(params))}")
        check_value(f"{prefix}{key}", value, hints.get(key, Any))


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


def _problem(value: Any, expected: Any) -> str | None:
    """What is wrong with `value` for the hint `expected` (the end of a sentence), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if expected is Any:
        return None
    origin = typing.get_origin(expected)
    if origin is Annotated:
        base, *rules = typing.get_args(expected)
        problem = _problem(value, base)
        if problem is None:
            problem = next((r.describe() for r in rules
                            if isinstance(r, Range) and not r.holds(value)), None)
        return problem
    if origin is Literal:
        if any(value == c and type(value) is type(c) for c in typing.get_args(expected)):
            return None
        return f"is not known; allowed: {_type_name(expected)}"
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(expected)
        problems = [_problem(value, arg) for arg in args]
        if None in problems:
            return None
        # a value of the right type but out of range: say the range, not the type
        fitting = [(arg, p) for arg, p in zip(args, problems) if _fits(value, arg)]
        if not fitting:
            return f"has the wrong type; expected {_type_name(expected)}"
        if typing.get_origin(fitting[0][0]) is Literal and \
                len([a for a in args if a is not type(None)]) > 1:
            return f"is not allowed; expected {_type_name(expected)}"
        return fitting[0][1]
    if not _fits(value, expected):
        return f"has the wrong type; expected {_type_name(expected)}"
    item = (typing.get_args(expected) or (Any,))[0]
    if isinstance(value, (list, tuple)) and origin in (list, tuple) and item is not Any:
        for v in value:
            problem = _problem(v, item)
            if problem is not None:
                return f"has an entry {_show(v)} that {problem}"
    return None


def _fits(value: Any, expected: Any) -> bool:
    """The value's type fits the hint, leaving choices and ranges aside."""
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    if origin is Annotated:
        return _fits(value, typing.get_args(expected)[0])
    if origin is Literal:
        return any(type(value) is type(c) for c in typing.get_args(expected))
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
    origin = typing.get_origin(expected)
    if origin is Annotated:
        base, *rules = typing.get_args(expected)
        words = [r.adjective() for r in rules if isinstance(r, Range)]
        before = [w for w in words if " " not in w]  # positive int; float in [0, 1]
        after = [w for w in words if " " in w]
        return " ".join([*before, _type_name(base), *after])
    if origin is Literal:
        return ", ".join(str(c) for c in typing.get_args(expected))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(expected))
    if origin in (list, tuple):
        args = typing.get_args(expected)
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if expected is type(None):
        return "null"
    if expected is bool:  # as a YAML override spells it
        return "true | false"
    return getattr(expected, "__name__", None) or str(expected).replace("typing.", "")


def _show(value: Any) -> str:
    """A value as an override spells it (null, true), strings quoted."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value) if isinstance(value, str) else str(value)
