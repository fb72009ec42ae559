"""What the trainer needs from a family's feeder (rollout.py, replay.py, offline.py)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

Episodes = list[tuple[int, float, int]]  # (env steps into the batch, return, length) per ending


class Feeder(ABC):
    """Turns envs (or a dataset) into the batches `algo.update` takes, and owns the episodes in
    progress: their state is saved and restored, or restarted, by the feeder itself."""

    validation: Any = None  # offline: the held-out rows, for algo.validate
    dataset: dict | None = None  # the rows learnt from (path, sha256, rows), checked on resume

    @abstractmethod
    def collect(self, algo) -> tuple[Any, Episodes]:
        """One feeder step: (the batch for `update`, or None while warming up; episodes)."""

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None:
        """Stop background work (a rollout collected while the update runs)."""

    def restart_episodes(self, seed: int) -> None:
        """Start fresh episodes: a resume whose env state could not be saved as plain data."""

    def buffer_state(self) -> dict | None:
        """Data too large for every checkpoint (a replay buffer): saved in last.pt when asked."""
        return None

    def load_buffer_state(self, state: dict | None, source: str) -> None:
        """`state` from buffer_state, or None when `source` (a checkpoint) holds none."""
