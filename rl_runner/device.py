"""trainer.device: where an algorithm's networks live (auto | cpu | cuda | cuda:N)."""
from __future__ import annotations

import re

import torch

from rl_runner.errors import UserError

PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str, gpu_pays: bool = True) -> torch.device:
    """The torch device `trainer.device` names; one line where it is not here.

    auto: the GPU where there is one and it pays (`gpu_pays`: image observations, whose CNN
    dominates the step), else the CPU, where the numpy kernels run small MLPs faster than a
    GPU's kernel launches would."""
    spec = str(spec)
    if not PATTERN.match(spec):
        raise UserError(f"trainer.device={spec!r} is not known; allowed: auto, cpu, cuda, cuda:N")
    if spec == "auto":
        return torch.device("cuda" if gpu_pays and torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise UserError(f"trainer.device={spec}: CUDA is not available here (torch "
                        f"{torch.__version__}, {build}, sees no GPU); allowed here: auto, cpu")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"trainer.device={spec}: this machine has {count} CUDA device(s); "
                        f"allowed: cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)
