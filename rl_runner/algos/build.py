"""The algorithm a config names, built for an env's spaces with its hyperparameters checked."""
from __future__ import annotations

import logging

import gymnasium as gym
from hydra.utils import get_class
from omegaconf import DictConfig

from rl_runner import config as config_checks
from rl_runner.algos.contracts import check_contract
from rl_runner.errors import UserError, one_line


def algo_class(cfg: DictConfig) -> type:
    hydra_log = logging.getLogger("hydra.utils")  # get_class logs its own multi-line error
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)
    try:
        return get_class(cfg.algo._target_)
    except Exception as e:
        why = one_line(e)  # Hydra's message spans lines
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported ({why})") from None
    finally:
        hydra_log.setLevel(level)


def build_algo(cfg: DictConfig, obs_space: gym.Space, action_space: gym.Space):
    """The algorithm of `cfg.algo` for these spaces, its hyperparameters checked first."""
    cls = algo_class(cfg)
    name = getattr(cls, "name", "") or cls.__name__.lower()
    cls = cls.variant_for(action_space) if hasattr(cls, "variant_for") else cls
    if not cls.supports(action_space):
        able = config_checks.algos_supporting(action_space)
        raise UserError(f"{name} cannot handle the action space {action_space} of "
                        f"{cfg.env.id} (it takes "
                        f"{', '.join(t.__name__ for t in cls.action_spaces)}); algorithms "
                        f"that can: {', '.join(able) if able else 'none yet'}")
    config_checks.check_no_nested_targets(config_checks.to_plain(cfg.algo))
    kwargs = {k: config_checks.to_plain(v) for k, v in cfg.algo.items() if k != "_target_"}
    config_checks.check_algo_kwargs(name, cls, kwargs, config_checks.PROVIDED)
    # the class is called directly, not through Hydra's instantiate: that would also call any
    # `_target_` nested in a hyperparameter (a checkpoint's config is not to name code)
    try:
        algo = cls(observation_space=obs_space, action_space=action_space, n_envs=cfg.env.n_envs,
                   total_steps=cfg.trainer.total_steps, seed=cfg.seed, **kwargs)
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, MemoryError) as e:
        why = one_line(e, 200)
        raise UserError(f"algo: {name} cannot be built with these hyperparameters "
                        f"({type(e).__name__}: {why})") from None
    check_contract(algo, name)
    return algo
