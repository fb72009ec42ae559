"""What a run records about itself in results.json."""
from __future__ import annotations

import platform

import gymnasium as gym
import torch

import rl_runner


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "gymnasium": gym.__version__, "rl_runner": rl_runner.__version__}
