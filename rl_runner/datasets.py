"""Transition datasets for imitation and offline RL: one .npz file, arrays plus JSON metadata.

Arrays, one row per environment step (N rows), in collection order:
    observations [N, *obs_shape] float32     next_observations [N, *obs_shape] float32
        (uint8 where the env's observations are uint8 images: kept as the env gives them, a
        quarter of the bytes, scaled to [0, 1] only inside the network)
    actions [N] int64 (Discrete) or [N, *act_shape] float32 (Box, in the env's units)
    rewards [N] float32   terminations [N] bool   truncations [N] bool   episode_starts [N] bool
`next_observations` is the real successor, the final observation where an episode ended.
`metadata` is a JSON string: format, env_id, env_kwargs, observation_space, action_space, source
(checkpoint and its env steps), collection (settings), episode_returns, episode_lengths (complete
episodes only), created, rl_runner version.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from rl_runner import fileio
from rl_runner.encoders import is_image
from rl_runner.errors import UserError

FORMAT = "rl-runner-dataset-1"
ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminations",
          "truncations", "episode_starts")


@dataclass
class Dataset:
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    episode_starts: np.ndarray
    metadata: dict

    def __len__(self) -> int:
        return len(self.rewards)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}


def describe_space(space: gym.Space) -> dict:
    """A JSON description of a Box or Discrete space, enough to check a match later."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": np.asarray(space.low, np.float64).reshape(-1).tolist(),
                "high": np.asarray(space.high, np.float64).reshape(-1).tolist()}
    raise UserError(f"datasets hold Box or Discrete spaces, not {space}")


def save_dataset(path: Path, data: Dataset, unique_tmp: bool = False) -> None:
    """Write atomically (fileio): an existing file is never replaced; a full disk or unwritable
    folder is one line naming the path, with no temp file left. unique_tmp: no longer needed (the
    temp file is always this process's own, so parallel runs may fill the cache at once)."""
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} already exists; choose another out=")
    check_arrays(path, data)
    meta = np.array(json.dumps({"format": FORMAT, **data.metadata}))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez_compressed(f, metadata=meta, **data.arrays())

    fileio.write_atomic_with(path, write)


def load_dataset(path: Path) -> Dataset:
    """Read and check a dataset file; anything wrong is one UserError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (*ARRAYS, "metadata") if k not in f.files]
            if missing:
                raise UserError(f"dataset {path}: not an rl-runner dataset (missing "
                                f"{', '.join(missing)})")
            arrays = {k: f[k] for k in ARRAYS}
            meta = json.loads(str(f["metadata"]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"dataset {path}: not a readable .npz file ({type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"dataset {path}: format {meta.get('format')!r} is not {FORMAT!r}")
    data = Dataset(**arrays, metadata=meta)
    check_arrays(path, data)
    return data


def check_arrays(path: Path, data: Dataset) -> None:
    n = len(data.rewards)
    if n == 0:
        raise UserError(f"dataset {path}: no transitions")
    for name, arr in data.arrays().items():
        if len(arr) != n:
            raise UserError(f"dataset {path}: {name} has {len(arr)} rows, rewards has {n}")
    if data.observations.shape != data.next_observations.shape:
        raise UserError(f"dataset {path}: observations {data.observations.shape} and "
                        f"next_observations {data.next_observations.shape} differ in shape")
    obs, next_obs = data.observations.dtype, data.next_observations.dtype
    if obs != next_obs:
        raise UserError(f"dataset {path}: observations are {obs} but next_observations are "
                        f"{next_obs}; both must have one dtype")
    if not (np.issubdtype(obs, np.floating) or obs == np.uint8):
        raise UserError(f"dataset {path}: observations are {obs}; allowed: float32 (or another "
                        "float), uint8 (images)")
    for name in ("terminations", "truncations", "episode_starts"):
        if getattr(data, name).dtype != np.bool_:
            raise UserError(f"dataset {path}: {name} must be bool, not "
                            f"{getattr(data, name).dtype}")


def check_matches(data: Dataset, path: Path, env_id: str, obs_space: gym.Space,
                  action_space: gym.Space) -> None:
    """Fail with one line where the dataset was not collected on this env and these spaces."""
    meta = data.metadata
    if meta.get("env_id") != env_id:
        raise UserError(f"dataset {path} was collected on {meta.get('env_id')}, but this run's "
                        f"env is {env_id}")
    obs_shape = tuple(data.observations.shape[1:])
    if obs_shape != tuple(obs_space.shape):
        raise UserError(f"dataset {path}: observations of shape {obs_shape}, but {env_id} "
                        f"gives {tuple(obs_space.shape)}")
    check_obs_dtype(data.observations.dtype, path, env_id, obs_space)
    if isinstance(action_space, gym.spaces.Discrete):
        ok = data.actions.ndim == 1 and np.issubdtype(data.actions.dtype, np.integer)
        ok = ok and bool(((data.actions >= action_space.start)
                          & (data.actions < action_space.start + action_space.n)).all())
        want = f"integers in [{action_space.start}, {action_space.start + action_space.n})"
    else:
        ok = tuple(data.actions.shape[1:]) == tuple(action_space.shape)
        want = f"rows of shape {tuple(action_space.shape)}"
    if not ok:
        raise UserError(f"dataset {path}: its actions {data.actions.dtype} "
                        f"{tuple(data.actions.shape)} do not fit {action_space} ({want})")


def check_obs_dtype(dtype: np.dtype, path: Path, env_id: str, obs_space: gym.Space) -> None:
    """Images must come as uint8, as the env gives them; uint8 rows fit only an env whose
    observations are uint8 (float rows fit any other env, as rl-collect wrote them before)."""
    if is_image(obs_space) and dtype != np.uint8:
        raise UserError(f"dataset {path}: observations are {dtype}, but {env_id} gives uint8 "
                        "images; collect the dataset again with rl-collect, which keeps them "
                        "uint8")
    space_dtype = getattr(obs_space, "dtype", None)
    if dtype == np.uint8 and space_dtype != np.uint8:
        raise UserError(f"dataset {path}: observations are uint8, but {env_id} gives "
                        f"{space_dtype}; collect the dataset on this env")
