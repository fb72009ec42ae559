"""The algorithm a config names, built for an env's spaces with its hyperparameters checked."""
from __future__ import annotations

import logging

import gymnasium as gym
from hydra.utils import get_class
from omegaconf import DictConfig

from rl_runner import config as config_checks
from rl_runner.algos.contracts import FAMILIES, algo_name, check_contract, constructor_params
from rl_runner.checkpoint import encode
from rl_runner.device import resolve_device
from rl_runner.encoders import is_image
from rl_runner.errors import UserError, one_line


def algo_class(cfg: DictConfig) -> type:
    hydra_log = logging.getLogger("hydra.utils")  # get_class logs its own multi-line error
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    target = cfg.algo.get("_target_")
    if not isinstance(target, str) or not target:
        raise UserError("algo has no _target_ (the algorithm's class, module.Class); its YAML in "
                        "conf/algo/ names it")
    try:
        cls = get_class(target)
    except Exception as e:
        why = one_line(e)  # Hydra's message spans lines
        raise UserError(f"algo._target_={target!r} cannot be imported ({why})") from None
    finally:
        hydra_log.setLevel(level)
    if not (isinstance(cls, type) and issubclass(cls, tuple(FAMILIES.values()))):
        raise UserError(f"algo._target_={target!r} is not an algorithm: it must "
                        "subclass OnPolicy, OffPolicy or Offline (rl_runner/algos/contracts.py)")
    return cls


def build_algo(cfg: DictConfig, obs_space: gym.Space, action_space: gym.Space,
               device: str = "cpu"):
    """The algorithm of `cfg.algo` for these spaces, its hyperparameters checked first.

    `device` (as trainer.device: auto, cpu, cuda, cuda:N) is resolved and passed as a
    torch.device to classes whose constructor takes `device`; a class that does not runs on the
    CPU (auto) or is refused (a GPU named)."""
    cls = algo_class(cfg)
    name = algo_name(cls)
    cls = cls.variant_for(action_space)
    if not cls.supports(action_space):
        able = config_checks.algos_supporting(action_space)
        raise UserError(f"{name} cannot handle the action space {action_space} of "
                        f"{cfg.env.id} (it takes "
                        f"{', '.join(t.__name__ for t in cls.action_spaces)}); algorithms "
                        f"that can: {', '.join(able) if able else 'none yet'}")
    config_checks.check_no_nested_targets(config_checks.to_plain(cfg.algo))
    kwargs = {k: config_checks.to_plain(v) for k, v in cfg.algo.items() if k != "_target_"}
    if cls.__abstractmethods__:
        raise UserError(f"algorithm {name} ({cls.__module__}.{cls.__name__}) does not write "
                        f"{', '.join(sorted(cls.__abstractmethods__))} (rl_runner/algos/"
                        "contracts.py)")
    # the class is called directly, not through Hydra's instantiate: that would also call any
    # `_target_` nested in a hyperparameter (a checkpoint's config is not to name code)
    if "device" in constructor_params(cls):
        kwargs["device"] = resolve_device(device, is_image(obs_space))
    elif device not in ("cpu", "auto"):
        raise UserError(f"algorithm {name} runs on the CPU only (its constructor takes no "
                        f"device); trainer.device={device} is not for it; allowed: cpu, auto")
    try:
        algo = cls(observation_space=obs_space, action_space=action_space, n_envs=cfg.env.n_envs,
                   total_steps=cfg.trainer.total_steps, seed=cfg.seed, **kwargs)
    except UserError:
        raise
    except Exception as e:  # a plugin's own exception too: its message, on one line
        why = one_line(e, 200)
        raise UserError(f"algo: {name} cannot be built with these hyperparameters "
                        f"({type(e).__name__}: {why})") from None
    check_contract(algo, name)
    try:  # a state_dict a checkpoint cannot hold: said now, not after the first hours of training
        encode(algo.state_dict(), "algo")
    except TypeError as e:
        raise UserError(f"algorithm {name}: its state_dict() is not plain data ({e}); "
                        "a checkpoint holds tensors, numpy arrays, numbers, strings, lists and "
                        "dicts only") from None
    return algo
