"""Minari datasets already on disk, read into rl-runner's Dataset (nothing is downloaded).

dataset.path takes `minari:<dataset id>` (looked up where Minari keeps its datasets:
$MINARI_DATASETS_PATH, else ~/.minari/datasets) or a Minari dataset's directory (the one holding
data/metadata.json, or data/ itself). Episodes become rows as rl-collect writes them: Minari keeps
len + 1 observations per episode, so row t is (obs[t], action[t], reward[t], obs[t + 1]).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from rl_runner.datasets import Dataset, check_arrays, describe_space
from rl_runner.errors import UserError

PREFIX = "minari:"
METADATA = "metadata.json"


def minari_data_dir(path: str) -> Path | None:
    """The data directory of a Minari dataset at path, or None where path is not one."""
    p = Path(path)
    for candidate in (p / "data", p):
        if (candidate / METADATA).is_file():
            return candidate
    return None


def is_minari(path: str) -> bool:
    return path.startswith(PREFIX) or minari_data_dir(path) is not None


def check_spaces_given(folder: Path | None, path: str) -> None:
    """Minari builds the env from the metadata's env_spec where the spaces are missing, which
    imports and calls the entry point the file names: a dataset someone handed over must
    carry its spaces, and is refused (one line) without them."""
    meta_file = folder / METADATA if folder is not None else None
    if meta_file is None or not meta_file.is_file():
        raise FileNotFoundError(path)
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"dataset.path={path}: {meta_file} is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) and meta[k]
                                              for k in ("observation_space", "action_space")):
        raise UserError(f"dataset.path={path}: {meta_file} gives no observation_space and "
                        "action_space; rl-runner does not build the env its env_spec names")


def load_minari(path: str) -> Dataset:
    """Read a Minari dataset (by `minari:<id>` or directory) as one Dataset; errors are
    UserErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari warns about optional extras it lacks
            import minari
    except ImportError:
        raise UserError(f"dataset.path={path} is a Minari dataset, but minari is not installed "
                        f"(pip install 'rl-runner[minari]')") from None
    try:
        if path.startswith(PREFIX):
            folder = minari.storage.get_dataset_path(path[len(PREFIX):]) / "data"
            check_spaces_given(folder, path)
            source = minari.load_dataset(path[len(PREFIX):], download=False)
        else:
            check_spaces_given(minari_data_dir(path), path)
            source = minari.MinariDataset(minari_data_dir(path))
        return convert(source, path)
    except FileNotFoundError:
        raise UserError(f"dataset.path={path}: no such Minari dataset on disk (under "
                        f"{minari.storage.get_dataset_path()}); rl-runner never downloads "
                        f"one, fetch it first with `minari download`") from None
    except (ValueError, OSError, KeyError) as e:  # e.g. a damaged data file
        raise UserError(f"dataset.path={path}: Minari cannot read it ({e})") from None


def convert(source, path: str) -> Dataset:
    """A MinariDataset's episodes as rows, in episode order."""
    obs_space, act_space = source.observation_space, source.action_space
    if not isinstance(obs_space, gym.spaces.Box) or \
            not isinstance(act_space, (gym.spaces.Box, gym.spaces.Discrete)):
        raise UserError(f"dataset.path={path}: rl-runner reads Minari datasets with Box "
                        f"observations and Box or Discrete actions, not {obs_space} and "
                        f"{act_space}")
    if source.env_spec is None:
        raise UserError(f"dataset.path={path}: the Minari dataset records no env_spec, so the "
                        f"env it was collected on cannot be checked")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "observations", "actions", "rewards", "next_observations", "terminations",
        "truncations", "episode_starts")}
    returns, lengths = [], []
    for episode in source.iterate_episodes():
        n, obs = len(episode), np.asarray(episode.observations)
        parts["observations"].append(obs[:n])
        parts["next_observations"].append(obs[1:n + 1])
        parts["actions"].append(np.asarray(episode.actions))
        parts["rewards"].append(np.asarray(episode.rewards))
        parts["terminations"].append(np.asarray(episode.terminations, bool))
        truncations = np.array(episode.truncations, bool)
        if n and not (episode.terminations[-1] or truncations[-1]):
            truncations[-1] = True  # cut short by the end of the collection
        parts["truncations"].append(truncations)
        parts["episode_starts"].append(np.arange(n) == 0)
        if n and (episode.terminations[-1] or episode.truncations[-1]):  # as Minari stored it
            returns.append(float(np.sum(episode.rewards)))
            lengths.append(n)
    if not parts["rewards"]:
        raise UserError(f"dataset.path={path}: the Minari dataset holds no episodes")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for k in ("observations", "next_observations", "rewards"):
        arrays[k] = arrays[k].astype(np.float32)
    discrete = isinstance(act_space, gym.spaces.Discrete)
    arrays["actions"] = arrays["actions"].astype(np.int64 if discrete else np.float32)
    if discrete:
        arrays["actions"] = arrays["actions"].reshape(-1)
    data = Dataset(**arrays, metadata={
        "env_id": source.env_spec.id, "env_kwargs": dict(source.env_spec.kwargs),
        "observation_space": describe_space(obs_space),
        "action_space": describe_space(act_space),
        "source": {"minari": source.id, "minari_version": source.minari_version},
        "collection": {"source": "minari"},
        "episode_returns": returns, "episode_lengths": lengths})
    check_arrays(Path(path), data)
    return data
