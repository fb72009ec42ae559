"""The offline family's feeder: minibatches drawn from a fixed dataset; no env is stepped."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from rl_runner.algos.contracts import Offline
from rl_runner.batches import OfflineBatch
from rl_runner.datasets import Dataset
from rl_runner.demonstrations import fingerprint, take, training_dataset
from rl_runner.feeder import Episodes, Feeder


class OfflineFeeder(Feeder):
    """Minibatches drawn uniformly from the training rows; a held-out split for validation.

    The split holds out `val_fraction` of the rows at random (seeded), so that it works for one
    trajectory as for many; no environment is stepped.
    """

    def __init__(self, data: Dataset, algo: Offline, seed: int):
        self.rng = np.random.default_rng(seed + 20_000)
        n = len(data)
        n_val = int(round(algo.val_fraction * n))
        n_val = min(n_val, n - 1)
        order = np.random.default_rng(seed + 30_000).permutation(n)
        # no split: the rows themselves, not a copy (a dataset of images is gigabytes)
        self.train = take(data, np.sort(order[n_val:])) if n_val > 0 else data
        self.validation = take(data, np.sort(order[:n_val])) if n_val > 0 else None
        self.batch_size = algo.batch_size

    def collect(self, algo: Offline) -> tuple[OfflineBatch, Episodes]:
        """Rows as the dataset holds them: image observations stay uint8 until the network."""
        idx = self.rng.integers(0, len(self.train), self.batch_size)
        t = self.train
        return OfflineBatch(t.observations[idx], t.actions[idx], t.rewards[idx],
                            t.next_observations[idx], t.terminations[idx]), []

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def offline_feeder(cfg: DictConfig, envs: gym.vector.VectorEnv, algo: Offline) -> OfflineFeeder:
    """The dataset of cfg.dataset for these envs, split, and the algorithm fitted to its rows;
    the feeder's `dataset` says which rows (path and fingerprint)."""
    data, path = training_dataset(cfg, envs.single_observation_space, envs.single_action_space)
    feeder = OfflineFeeder(data, algo, cfg.seed)
    feeder.dataset = {"path": str(path), "sha256": fingerprint(data),
                      "rows": f"{len(feeder.train)} rows for training, "
                              f"{len(feeder.validation or ())} held out"}
    algo.fit_dataset(feeder.train)
    return feeder
