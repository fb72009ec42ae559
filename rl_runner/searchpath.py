"""Config groups over Hydra's search path: the bundled rl_runner.conf plus the entries of the
command line's `hydra.searchpath=[...]`, so that a user's own package can add an algorithm
(`rl-run algo=myalgo hydra.searchpath=[pkg://mypkg.conf]`, examples/plugin/).

Options are listed and loaded by Hydra's own ConfigRepository, the object its config loader
composes from, so file:// and pkg:// entries behave exactly as in composition."""
from __future__ import annotations

import functools
from collections.abc import Sequence

from hydra._internal.config_repository import ConfigRepository
from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
from hydra.core.hydra_config import HydraConfig
from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from omegaconf import DictConfig

from rl_runner.errors import UserError, one_line

BUNDLED = "pkg://rl_runner.conf"
KEY = "hydra.searchpath"


def from_overrides(parsed: list) -> list[str]:
    """The entries of `hydra.searchpath=[...]` among parsed overrides ([] when absent), each
    checked to be readable by Hydra; UserError with one line otherwise."""
    ov = next((ov for ov in parsed if ov.get_key_element() == KEY), None)
    if ov is None:
        return []
    value = None if ov.is_sweep_override() else ov.value()
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise UserError(f"{KEY} takes one list of config locations, e.g. "
                        f"{KEY}=[pkg://mypkg.conf] or {KEY}=[file:///abs/path/to/conf]")
    for entry in value:
        check_entry(entry)
    return value


def check_entry(entry: str) -> None:
    """Refuse an entry Hydra would skip with only a warning: a missing folder, a package that
    does not import, an unknown scheme."""
    try:
        source = _repository((entry,), bundled=False).get_sources()[0]
        available = source.available()
        why = "" if available else (
            "is not an importable package with an __init__.py" if source.scheme() == "pkg"
            else "is not a folder")
    except Exception as e:  # an unknown scheme; a package whose import fails
        why = f"cannot be read ({one_line(e, 200)})"
    if why:
        raise UserError(f"{KEY}: {entry} {why}; use file://<folder> or pkg://<package> "
                        "holding config groups such as algo/<name>.yaml")


def current() -> list[str]:
    """The running Hydra job's `hydra.searchpath` (its command line's); [] outside a job."""
    if not HydraConfig.initialized():
        return []
    return [str(e) for e in HydraConfig.get().get("searchpath") or []]


def group_options(group: str, searchpath: Sequence[str] = ()) -> list[str]:
    """The options of a config group: bundled ones plus those on `searchpath`, sorted."""
    return sorted(set(_repository(tuple(searchpath)).get_group_options(group, ObjectType.CONFIG)))


def load_option(group: str, name: str, searchpath: Sequence[str] = ()) -> DictConfig | None:
    """The YAML of one group option as written (None if no entry has it); an entry earlier on
    the path wins, as in composition."""
    result = _repository(tuple(searchpath)).load_config(f"{group}/{name}")
    return None if result is None else result.config


def algo_targets(searchpath: Sequence[str] = ()) -> dict[str, str]:
    """{algo choice: the `_target_` its YAML names}, bundled and on `searchpath`."""
    targets = {}
    for name in group_options("algo", searchpath):
        yaml = load_option("algo", name, searchpath)
        if isinstance(yaml, DictConfig) and isinstance(yaml.get("_target_"), str):
            targets[name] = yaml._target_
    return targets


@functools.lru_cache(maxsize=16)
def _repository(searchpath: tuple[str, ...], bundled: bool = True) -> ConfigRepository:
    Plugins.instance()  # registers Hydra's config sources (file://, pkg://) on first use
    path = ConfigSearchPathImpl()
    for entry in ((BUNDLED,) if bundled else ()) + searchpath:
        path.append(provider="rl-run", path=entry)
    return ConfigRepository(config_search_path=path)
