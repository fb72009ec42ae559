"""Hyperparameters renamed since a release, and the upgrade of a saved run config to today's names.

Checkpoints, run directories being resumed and the bundled experts hold the config they were
trained with, under the names of their day; whoever reads such a config passes it through
`upgrade_config`. A rename is one entry in RENAMED: files written before it keep loading.
"""
from __future__ import annotations

from typing import Any

RENAMED: dict[str, dict[str, str]] = {  # algo._target_ -> {old key: new key}
    # PPO's two KL keys read like TRPO's trust-region radius, and like each other
    "rl_runner.algos.ppo.PPO": {"target_kl": "kl_early_stop", "kl_target": "kl_penalty_target"},
    "rl_runner.algos.trpo.TRPO": {"target_kl": "max_kl"},
    # full-batch steps, unlike TRPO's value_epochs (passes of minibatches)
    "rl_runner.algos.pg.PolicyGradient": {"value_epochs": "value_steps"},
}
# keys an algorithm's YAML used to set and no longer does, dropped where they hold the value
# that is now the constructor's default: cql's old YAML set the Box learner's keys for Discrete
# actions too, which DiscreteCQL (rightly) refuses
DROPPED: dict[str, dict[str, Any]] = {
    "rl_runner.algos.cql.CQL": {"n_action_samples": 4, "actor_lr": 1e-4, "backup_entropy": False,
                                "ent_coef": None},
}
# keys an algorithm gained since, with the value that computes as a config without them did: a
# td3/ddpg run saved before algo.precision ran float32, which auto would now turn into bf16 on a
# CPU with bfloat16 units (and its resume would no longer be the uninterrupted run)
ADDED: dict[str, dict[str, Any]] = {
    "rl_runner.algos.td3.TD3": {"precision": "fp32"},
    "rl_runner.algos.td3.DDPG": {"precision": "fp32"},
}
GAIL = "rl_runner.algos.gail.GAIL"
# gail's algo.learner -> the learner's _target_ (rl_runner.algos.gail.LEARNERS; repeated here so
# that the command line's checks need not import torch)
GAIL_LEARNERS = {"ppo": "rl_runner.algos.ppo.PPO", "trpo": "rl_runner.algos.trpo.TRPO"}


def upgrade_config(config: Any) -> Any:
    """`config` (a saved run config, plain containers) with renamed algo keys under their new
    names, gail's algo.learner_kwargs included, and keys added since (ADDED) at the value that
    keeps its arithmetic; a new dict, the input is left as it was.
    Anything that is not such a config comes back unchanged, for its reader to refuse."""
    if not isinstance(config, dict) or not isinstance(config.get("algo"), dict):
        return config
    target = config["algo"].get("_target_")
    algo = _renamed(config["algo"], RENAMED.get(target, {}))
    algo = {k: v for k, v in algo.items()
            if not (k in DROPPED.get(target, {}) and _same(v, DROPPED[target][k]))}
    algo = {**algo, **{k: v for k, v in ADDED.get(target, {}).items() if k not in algo}}
    if algo.get("_target_") == GAIL and isinstance(algo.get("learner_kwargs"), dict):
        learner = GAIL_LEARNERS.get(algo.get("learner", "ppo"))
        algo["learner_kwargs"] = _renamed(algo["learner_kwargs"], RENAMED.get(learner, {}))
    return {**config, "algo": algo}


def renamed_to(key: str, allowed: list[str]) -> str | None:
    """The new name of `key` among `allowed` (an algorithm's keys) if `key` is an old name."""
    return next((table[key] for table in RENAMED.values()
                 if key in table and table[key] in allowed), None)


def _renamed(node: dict, table: dict[str, str]) -> dict:
    """A copy of `node` with each old key of `table` under its new name, in its old place. Where
    both names are present the old one stays, for the algorithm's check to name it."""
    return {(table[k] if k in table and table[k] not in node else k): v for k, v in node.items()}


def _same(value: Any, default: Any) -> bool:
    return type(value) is type(default) and value == default
