"""The HPARAMS-tab record of a run, declaring the hyperparameter columns of every algorithm.

TensorBoard's hparams plugin takes the experiment summary (the list of columns) of one run of the
logdir; a sweep that mixes algorithms would show only that run's algorithm's columns. So every run
declares the union: its own keys and the algo.* (and env.*) keys of every bundled config, while its
session start info holds only its own values.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from omegaconf import OmegaConf

# the config groups whose choices a sweep mixes (each choice brings keys of its own)
MIXED_GROUPS = ("algo", "env")


@lru_cache(maxsize=1)
def bundled_keys() -> dict[str, object]:
    """Every `group.key` of the bundled configs of MIXED_GROUPS, with a default value that gives
    its type (null values declared as strings, as the run writes them)."""
    from rl_runner.config import flatten, group_choices

    keys: dict[str, object] = {}
    for group in MIXED_GROUPS:
        for name in group_choices(group):
            node = OmegaConf.load(resources.files("rl_runner.conf") / group / f"{name}.yaml")
            plain = OmegaConf.to_container(node, resolve=False)
            for key, value in flatten(plain, f"{group}.").items():
                keys.setdefault(key, value if isinstance(value, (bool, int, float, str))
                                else str(value))
    return keys
