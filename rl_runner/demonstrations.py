"""Where demonstrations come from (dataset.*): a dataset file, a Minari dataset, or the bundled
expert's episodes; checked against the env, then subsampled.

With no dataset.path, the dataset is collected from the bundled expert for the env on first use
and cached under $XDG_CACHE_HOME/rl-runner/datasets (default ~/.cache); the file name holds a hash
of the expert file and the collection settings, so a new expert or new settings collect afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from rl_runner.collection import rollout
from rl_runner.config import check_value
from rl_runner.datasets import Dataset, check_matches, load_dataset, save_dataset
from rl_runner.errors import UserError
from rl_runner.experts import expert_path
from rl_runner.minari_data import is_minari, load_minari
from rl_runner.params import Fraction, NonNegativeFloat, PositiveInt
from rl_runner.policy import load_policy

log = logging.getLogger("rl_runner")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "rl-runner" / "datasets"


def expert_dataset(env_name: str, episodes: int, seed: int, progress: bool = True,
                   noise: float = 0.0, epsilon: float = 0.0) -> tuple[Dataset, Path]:
    """The bundled expert's dataset for env_name, collected once (with rl-collect's action
    noise and epsilon-random mixing) and then read from the cache."""
    expert = expert_path(env_name)
    settings = {"episodes": episodes, "seed": seed, "deterministic": True, "noise": noise,
                "epsilon": epsilon}
    digest = hashlib.sha256(expert.read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    path = cache_dir() / f"{env_name}_expert_{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        return load_dataset(path), path
    policy = load_policy(expert.parent, str(expert))
    data = rollout(policy, episodes, None, settings, progress)
    if path.is_file():  # a parallel run (a sweep) collected the same data meanwhile
        return load_dataset(path), path
    save_dataset(path, data, unique_tmp=True)
    rets = data.metadata["episode_returns"]
    log.info("collected %d episodes from the bundled %s expert (noise %g, epsilon %g; return "
             "%.1f +- %.1f) into %s", len(rets), env_name, noise, epsilon, np.mean(rets),
             np.std(rets), path)
    return data, path


def training_dataset(cfg: DictConfig, obs_space: gym.Space,
                     action_space: gym.Space) -> tuple[Dataset, Path]:
    """dataset.path or the bundled expert's data, checked against the env, then subsampled."""
    d = cfg.dataset
    for key, kind in (("path", str | None), ("episodes", PositiveInt | None),
                      ("max_samples", PositiveInt | None),
                      ("expert_episodes", PositiveInt), ("expert_seed", int),
                      ("expert_noise", NonNegativeFloat), ("expert_epsilon", Fraction)):
        check_value(f"dataset.{key}", d[key], kind)
    if not d.path and d.expert_noise and not isinstance(action_space, gym.spaces.Box):
        raise UserError(f"dataset.expert_noise={d.expert_noise} is for Box actions; this env "
                        f"has {action_space} (use dataset.expert_epsilon)")
    if d.path and is_minari(d.path):
        path = Path(d.path)
        data = load_minari(d.path)
    elif d.path:
        path = Path(d.path)
        data = load_dataset(path)
    else:
        data, path = expert_dataset(cfg.env.name, d.expert_episodes, d.expert_seed,
                                    cfg.trainer.progress, float(d.expert_noise),
                                    float(d.expert_epsilon))
    check_matches(data, path, cfg.env.id, obs_space, action_space)
    return subsample(data, d.episodes, d.max_samples, cfg.seed), path


def subsample(data: Dataset, episodes: int | None, max_samples: int | None,
              seed: int) -> Dataset:
    """The first `episodes` episodes, then `max_samples` rows drawn without replacement (seeded),
    kept in their order."""
    keep = np.arange(len(data))
    if episodes is not None:
        if episodes <= 0:
            raise UserError(f"dataset.episodes={episodes} must be positive")
        episode_of_row = np.cumsum(data.episode_starts) - 1
        n = int(episode_of_row[-1]) + 1
        if episodes > n:
            raise UserError(f"dataset.episodes={episodes}, but the dataset holds {n}")
        keep = keep[episode_of_row < episodes]
    if max_samples is not None:
        if max_samples <= 0:
            raise UserError(f"dataset.max_samples={max_samples} must be positive")
        if max_samples < len(keep):
            rng = np.random.default_rng(seed + 40_000)
            keep = np.sort(rng.choice(keep, max_samples, replace=False))
    return data if len(keep) == len(data) else take(data, keep)  # all rows: no copy


def take(data: Dataset, rows: np.ndarray) -> Dataset:
    arrays = {name: arr[rows] for name, arr in data.arrays().items()}
    return replace(data, **arrays)


def fingerprint(data: Dataset) -> str:
    """sha256 of a dataset's rows (names, dtypes, shapes and bytes): resume checks it, so a
    replaced dataset file does not continue a run silently."""
    digest = hashlib.sha256()
    for name, arr in data.arrays().items():
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def expert_data(cfg: DictConfig, envs: gym.vector.VectorEnv) -> tuple[Dataset, dict]:
    """Imitation beside the env (gail): the whole dataset of cfg.dataset, and which rows (path,
    fingerprint, how many), for resume to check."""
    data, path = training_dataset(cfg, envs.single_observation_space, envs.single_action_space)
    return data, {"path": str(path), "sha256": fingerprint(data),
                  "rows": f"{len(data)} expert pairs"}
