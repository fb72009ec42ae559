"""Command-line overrides checked against the composed config, before Hydra creates a run directory.

A mistake a new user makes gets one line that says what to type instead: a sweep without -m, a list
without brackets, a key the config does not have (with the keys that node allows, and the closest
one), a bad value (the checks the trainer runs later, run here on the composed config).
"""
from __future__ import annotations

import difflib
import itertools
import shlex
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf

from rl_runner.config import PROVIDED, algo_keys
from rl_runner.errors import UserError, one_line
from rl_runner.renames import renamed_to

CONFIG_MODULE = "rl_runner.conf"
# names other libraries and papers use for a key of ours (matched on the last part of a key)
ALIASES = {"learning_rate": "lr", "discount": "gamma", "discount_factor": "gamma",
           "net_arch": "hidden_sizes", "hidden_layers": "hidden_sizes", "layers": "hidden_sizes",
           "clip_range": "clip_coef", "clip_param": "clip_coef", "clip_ratio": "clip_coef",
           "lam": "gae_lambda", "lambda": "gae_lambda", "polyak": "tau",
           "timesteps": "total_steps", "steps": "total_steps", "num_envs": "n_envs",
           "env_id": "id", "threads": "torch_threads", "activation_fn": "activation"}
_ABSENT = object()


def check_overrides(parsed: list[Override], argv: list[str], multirun: bool) -> None:
    """Forgotten -m, a list without brackets, an unknown key: one line, before anything runs.

    Groups (algo=ppo) are checked by the caller; here every other key is looked up in the config
    composed from the group choices (each swept group value in turn)."""
    if any(ov.get_key_element() == "resume" and ov.value() not in (None, "null") for ov in parsed):
        return  # resume takes the run's saved config and checks its own overrides
    mine = [ov for ov in parsed if not ov.is_hydra_override()]
    # the groups on the command line's hydra.searchpath (a user's own algo) count and compose too
    paths = [ov.input_line for ov in parsed if ov.get_key_element() == "hydra.searchpath"]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        groups = set(GlobalHydra.instance().config_loader().get_group_options(
            "", ObjectType.GROUP, config_name="train", overrides=paths)) - {"hydra"}
        group_ovs = [ov for ov in mine if _is_group(ov, groups)]
        if not multirun:
            for ov in group_ovs:
                if ov.is_sweep_override():
                    raise UserError(_forgotten_multirun(ov, argv))
        fixed = paths + [ov.input_line for ov in group_ovs if not ov.is_sweep_override()]
        trials = [fixed] + [fixed + [f"{ov.get_key_element()}={value}"] for ov in group_ovs
                            if ov.is_sweep_override() for value in _sweep_strings(ov)]
        for trial in trials:
            try:
                cfg = compose(config_name="train", overrides=trial)
            except Exception:  # a bad group choice: the full composition reports it
                continue
            _check_keys(cfg, [ov for ov in mine if not _is_group(ov, groups)], argv, multirun,
                        groups)


def check_jobs(parsed: list[Override], overrides: list[str], limit: int = 64) -> None:
    """check_values on the config of each job the command line makes (a sweep: the product of
    its choice and range sweeps), stopping at the first job that passes. Refused only when every
    job would fail: a sweep where some jobs fail is recorded job by job (rl_runner/jobs.py).
    Call inside initialize_config_module; interval sweeps (Optuna) keep the config's value."""
    fixed = [text for text, ov in zip(overrides, parsed) if not ov.is_sweep_override()]
    axes = []
    for ov in parsed:
        if ov.is_sweep_override() and not ov.is_hydra_override():
            values = _sweep_strings(ov)
            if values:
                axes.append([f"{ov.get_key_element()}={value}" for value in values])
    first: UserError | None = None
    for job in itertools.islice(itertools.product(*axes), limit):
        try:
            check_values(compose(config_name="train", overrides=fixed + list(job)))
            return
        except UserError as e:
            first = first or e
        except Exception:  # composition errors are _check_composes's to report
            return
    if first is not None:
        raise first


def check_values(cfg: DictConfig) -> None:
    """The trainer's checks of a composed config (trainer.*, seed, env.*, algo.* against the
    algorithm's constructor), run before Hydra makes a run directory."""
    from rl_runner.config import check_algo_kwargs, check_trainer, to_plain
    from rl_runner.logger import check_loggers
    from rl_runner.algos.build import algo_class
    from rl_runner.algos.contracts import algo_name

    try:  # an interpolation that does not resolve (${oc.env:UNSET}, ${no.such.key})
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise UserError(f"the config does not resolve: {one_line(e, 300)}") from None
    check_trainer(cfg)
    check_loggers(cfg.get("logger"))
    cls = algo_class(cfg)
    name = algo_name(cls)
    kwargs = {k: to_plain(v) for k, v in cfg.algo.items() if k != "_target_"}
    allowed = algo_params(cls)
    for key in kwargs:
        if key not in allowed:
            raise UserError(_unknown(f"algo.{key}", key, allowed, f"a hyperparameter of {name}",
                                     _leaves(cfg), "algo"))
    check_algo_kwargs(name, cls, kwargs, PROVIDED)
    _check_build(cfg)


def _check_build(cfg: DictConfig) -> None:
    """Make one env and the algorithm for its spaces, as the trainer will: an unknown env id, an
    action space the algorithm cannot handle, a value its constructor refuses (algo.activation)
    show here. Only those one-line errors count: anything else (an env that only a remote worker
    can make) is left to the job."""
    from rl_runner.envs import env_options, make_vec_env
    from rl_runner.algos.build import build_algo

    try:
        envs = make_vec_env(cfg.env.id, 1, training=True, **env_options(cfg.env))
    except UserError:
        raise
    except Exception:
        return
    try:
        build_algo(cfg, envs.single_observation_space, envs.single_action_space)
    except UserError:
        raise
    except Exception:
        return
    finally:
        envs.close()


def algo_params(cls: type) -> list[str]:
    """The algo.* keys a user may set (rl_runner.config.algo_keys), sorted."""
    return sorted(algo_keys(cls))


# ---- keys --------------------------------------------------------------------------------------
def _check_keys(cfg: DictConfig, overrides: list[Override], argv: list[str], multirun: bool,
                groups: set[str]) -> None:
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    added: list[str] = []  # keys that a +key=value before creates
    for ov in overrides:
        key = ov.key_or_group
        if ov.type in (OverrideType.DEL, OverrideType.FORCE_ADD):
            continue
        if any(key == a or key.startswith(a + ".") for a in added):
            continue
        current = _lookup(tree, key)
        if ov.type == OverrideType.ADD:
            if current is not _ABSENT:
                raise UserError(f"{key} is already in the config; set it without +: "
                                f"{key}={_value_text(ov)}")
            added.append(key)
            continue
        if current is _ABSENT:
            raise UserError(_unknown_key(cfg, tree, key, ov, groups))
        if ov.is_sweep_override():
            _check_sweep(ov, key, current, argv, multirun)


def _check_sweep(ov: Override, key: str, current: Any, argv: list[str], multirun: bool) -> None:
    """key=a,b: a list without brackets where the key holds a list, else a sweep that needs -m."""
    try:
        values = list(ov.sweep_iterator())
    except Exception:  # interval sweeps (Optuna) have no values to look at
        values = []
    if isinstance(current, (list, tuple)) and values and not all(
            isinstance(v, (list, tuple)) for v in values):
        text = _value_text(ov)
        message = f"{key} takes a list: {key}=[{text}]"
        if multirun:
            now = ",".join(str(v) for v in current)
            message += f" (a sweep over lists: -m {key}=[{now}],[{text}])"
        raise UserError(message)
    if not multirun:
        raise UserError(_forgotten_multirun(ov, argv))


def _unknown_key(cfg: DictConfig, tree: dict, key: str, ov: Override, groups: set[str]) -> str:
    """'<key> is not a ... of <node>; did you mean ...? allowed: ...' for the deepest node of
    `key` that the config has."""
    parts = key.split(".")
    node, depth = tree, 0
    while depth < len(parts) - 1 and isinstance(node, dict) and isinstance(
            node.get(parts[depth]), dict):
        node, depth = node[parts[depth]], depth + 1
    word, where = parts[depth], ".".join(parts[:depth])
    leaves = _leaves(cfg)
    if where == "algo":
        from rl_runner.algos.build import algo_class
        from rl_runner.algos.contracts import algo_name

        cls = algo_class(cfg)
        allowed = algo_params(cls)
        if word in allowed and depth == len(parts) - 1:
            return (f"{key} is a hyperparameter of {algo_name(cls)} that its config does not set; "
                    f"add it with +{key}={_value_text(ov)}")
        return _unknown(key, word, allowed, f"a hyperparameter of {algo_name(cls)}", leaves,
                       where)
    if where == "":
        allowed = sorted(set(node) | groups)
        return _unknown(key, word, allowed, "a config key", leaves, where)
    if not node or parts[depth - 1] == "kwargs":  # free-form: passed on as keyword arguments
        return (f"{key} is not in the config; {where} takes any key: add it with "
                f"+{key}={_value_text(ov)}")
    return _unknown(key, word, sorted(node), f"a key of {where}", leaves, where)


def _unknown(key: str, word: str, allowed: list[str], what: str, leaves: list[str],
             where: str) -> str:
    """The message for an unknown key: the closest allowed name (an exact alias or the same
    name in another node first, then a spelling match), and every allowed name."""
    new = renamed_to(word, allowed)
    if new is not None:  # a command line or script written before the rename
        return f"{key} was renamed to {where + '.' if where else ''}{new}"
    if where == "algo":
        owners = _algos_with(word)
        if owners:  # algo.clip_coef with algo=pg: a key of other algorithms
            has = "has" if len(owners) == 1 else "have"
            # and a near-identical own key (algo.n_step with pg: dqn's, and pg's n_steps)
            near = difflib.get_close_matches(word, allowed, n=1, cutoff=0.9)
            hint = f" did you mean {where}.{near[0]}?" if near else ""
            return (f"{key} is not {what} ({', '.join(owners)} {has} it);{hint} "
                    f"allowed: {', '.join(allowed)}")
    # the key itself is a leaf when added with +: never suggest it back
    names = {leaf.rsplit(".", 1)[-1]: leaf for leaf in sorted(leaves, key=len, reverse=True)
             if leaf != key.lstrip("+")}
    prefix = f"{where}." if where else ""
    hint = None
    for fuzzy in (False, True):
        match = close_match(word, allowed, fuzzy)
        if match is not None:
            hint = prefix + match
            break
        other = close_match(word, sorted(names), fuzzy)  # algo.total_steps: trainer.total_steps
        if other is not None:
            hint = names[other]
            break
    did_you_mean = f"; did you mean {hint}?" if hint else ";"
    return f"{key} is not {what}{did_you_mean} allowed: {', '.join(allowed)}"


def close_match(word: str, allowed: list[str], fuzzy: bool = True) -> str | None:
    """The allowed name closest to `word`: the same name in another case, a known alias, the
    same initials (learning_rate: lr); with `fuzzy`, difflib's closest spelling."""
    norm = word.lower().replace("-", "_")
    if norm in allowed:
        return norm
    if ALIASES.get(norm) in allowed:
        return ALIASES[norm]
    for name in allowed:
        if (("_" in norm and _initials(norm) == name)
                or ("_" in name and _initials(name) == norm)):
            return name
    found = difflib.get_close_matches(norm, allowed, n=1, cutoff=0.6) if fuzzy else []
    return found[0] if found else None


def _algos_with(word: str) -> list[str]:
    """The bundled algorithms whose config sets `word`."""
    from importlib import resources

    from rl_runner.config import group_choices

    root = resources.files(CONFIG_MODULE) / "algo"
    return [name for name in group_choices("algo")
            if word in OmegaConf.load(root / f"{name}.yaml")]


# ---- helpers -----------------------------------------------------------------------------------
def _is_group(ov: Override, groups: set[str]) -> bool:
    return "/" in ov.key_or_group or ov.key_or_group in groups


def _forgotten_multirun(ov: Override, argv: list[str]) -> str:
    command = " ".join(shlex.quote(a) for a in argv if a not in ("-m", "--multirun"))
    return (f"{ov.input_line.lstrip('+~')} is a sweep over several values; add -m to run each: "
            f"rl-run -m {command}")


def _sweep_strings(ov: Override) -> list[str]:
    try:
        return list(ov.sweep_string_iterator())
    except Exception:  # range/interval sweeps over a group: left to the sweeper
        return []


def _value_text(ov: Override) -> str:
    return ov.input_line.split("=", 1)[1] if "=" in ov.input_line else ""


def _lookup(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def _leaves(cfg: DictConfig) -> list[str]:
    """Every key path of the config, nodes and values."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                out.append(prefix + str(k))
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False), "")
    return out


def _initials(name: str) -> str:
    return "".join(p[0] for p in name.split("_") if p)
