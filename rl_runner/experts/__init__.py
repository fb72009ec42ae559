"""Bundled expert policies (<env>.pt), trained by rl-run itself: scripts/train_experts.py."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from rl_runner.errors import UserError


def expert_names() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".pt"))


def expert_path(env: str) -> Path:
    """The bundled checkpoint for env (a conf/env name), or a UserError listing those there are."""
    path = Path(str(resources.files(__name__) / f"{env}.pt"))
    if not path.is_file():
        raise UserError(f"no bundled expert for env={env}; bundled: {', '.join(expert_names())}; "
                        "give dataset.path=<a file from rl-collect>")
    return path

