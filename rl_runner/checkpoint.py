"""Checkpoint files: a plain dict written atomically, read back with clear errors."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from rl_runner.errors import UserError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint there")
    try:
        # our own files hold numpy arrays and RNG states, which weights_only refuses
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torn, truncated or not a torch file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UserError(f"{path}: not an rl-runner checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {state['format_version']} is not supported "
                        f"(this rl-runner reads format {FORMAT_VERSION})")
    return state


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
