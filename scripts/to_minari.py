"""Write an rl-runner dataset (.npz, docs/datasets.md) as a Minari dataset on disk.

    python scripts/to_minari.py DATASET.npz NAMESPACE/NAME-vN

The Minari dataset goes where Minari keeps its datasets ($MINARI_DATASETS_PATH, else
~/.minari/datasets); `rl-run ... dataset.path=minari:NAMESPACE/NAME-vN` reads it back. Needs the
minari extra (pip install -c constraints.txt -e '.[minari]').
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings

import gymnasium as gym
import numpy as np

from rl_runner.datasets import load_dataset
from rl_runner.errors import UserError


def episode_buffers(data) -> list:
    """One Minari EpisodeBuffer per episode: its observations and the last next observation."""
    from minari.data_collector import EpisodeBuffer

    # an episode also ends where the next row does not continue it: a replay buffer marks no
    # time limits, and several envs' rows interleave
    breaks = np.zeros(len(data), bool)
    breaks[1:] = ~np.all(data.observations[1:] == data.next_observations[:-1],
                         axis=tuple(range(1, data.observations.ndim)))
    ends_before = data.terminations[:-1] | data.truncations[:-1]
    breaks[1:] &= ~ends_before
    truncations = data.truncations.copy()
    truncations[:-1] |= breaks[1:]
    starts = np.flatnonzero(data.episode_starts | breaks).tolist() + [len(data)]
    buffers = []
    for i, (lo, hi) in enumerate(zip(starts[:-1], starts[1:])):
        obs = np.concatenate([data.observations[lo:hi], data.next_observations[hi - 1:hi]])
        buffers.append(EpisodeBuffer(
            id=i, observations=obs, actions=data.actions[lo:hi], infos={},
            rewards=data.rewards[lo:hi].tolist(),
            terminations=data.terminations[lo:hi].tolist(),
            truncations=truncations[lo:hi].tolist()))
    return buffers


def fail(message: str) -> None:
    print(f"to_minari: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="an rl-runner .npz dataset")
    parser.add_argument("minari_id", help="the Minari id to write, NAMESPACE/NAME-vN")
    args = parser.parse_args(argv)
    try:
        data = load_dataset(args.dataset)
    except UserError as e:
        fail(str(e))
    with warnings.catch_warnings():  # minari warns about the optional extras it lacks
        warnings.simplefilter("ignore")
        try:
            import minari
        except ImportError:
            fail("minari is not installed (pip install -c constraints.txt -e '.[minari]')")
        try:  # the env as it was collected on, with its kwargs (e.g. continuous=True)
            spec = gym.spec(data.metadata["env_id"])
            spec = dataclasses.replace(spec, kwargs={**spec.kwargs,
                                                     **data.metadata.get("env_kwargs", {})})
            out = minari.create_dataset_from_buffers(
                args.minari_id, episode_buffers(data), env=spec,
                algorithm_name=str(data.metadata.get("source", {}).get("algo", "rl-runner")))
        except (ValueError, gym.error.Error) as e:  # e.g. the id exists: nothing is replaced
            fail(str(e))
    print(f"wrote Minari dataset {args.minari_id}: {out.total_episodes} episodes, "
          f"{out.total_steps} steps, under {minari.storage.get_dataset_path()}")


if __name__ == "__main__":
    main()
