"""A trained policy from a run directory: the algorithm rebuilt from one of its checkpoints."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from rl_runner.algos.contracts import Algorithm
from rl_runner.algos.build import build_algo
from rl_runner.checkpoint import load_checkpoint, misfit, nonfinite_paths
from rl_runner.config import check_file_config, to_plain
from rl_runner.envs import env_options, make_one, make_vec_env
from rl_runner.errors import UserError, one_line
from rl_runner.renames import upgrade_config

NAMED = ("best", "last")  # checkpoint=best|last name files in <run>/checkpoints/


@dataclass
class Policy:
    algo: Algorithm
    config: DictConfig  # the training run's resolved config, as saved in the checkpoint
    checkpoint: Path
    env_steps: int  # how long the policy had trained when the checkpoint was written

    @property
    def env_id(self) -> str:
        return self.config.env.id

    @property
    def env_kwargs(self) -> dict:
        return to_plain(self.config.env.get("kwargs")) or {}

    @property
    def env_options(self) -> dict:
        """kwargs and atari, as make_vec_env, make_one and Evaluator take them."""
        return env_options(self.config.env)

    def make_env(self, record: Callable[[gym.Env], gym.Env] | None = None) -> gym.Env:
        """One env as the run's evaluations see it (on Atari: whole games, the real score)."""
        return make_one(self.env_id, **self.env_options, training=False, record=record)

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self.algo.act(obs, deterministic=deterministic)


def find_checkpoint(run: Path, checkpoint: str = "best") -> Path:
    """best.pt (falling back to last.pt when no evaluation improved), last.pt, or a file."""
    if not run.is_dir():
        raise UserError(f"run={run}: no such run directory")
    if checkpoint not in NAMED:
        path = Path(checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint={checkpoint}: no such file; allowed: best, last or the "
                            "path of a .pt file")
        # what the tools write (eval.json) goes into run=: another run's checkpoint would
        # put its results among this run's. Inside: as written (a run's own symlink to
        # scratch storage) or where it leads
        if not (path.resolve().is_relative_to(run.resolve()) or Path(
                os.path.normpath(path.absolute())).is_relative_to(os.path.normpath(
                    run.absolute()))):
            raise UserError(f"checkpoint={checkpoint} is not in run={run}; allowed: best, last "
                            "or a .pt file inside the run (pass its own run as run=)")
        return path
    names = ["best.pt", "last.pt"] if checkpoint == "best" else ["last.pt"]
    for name in names:
        if (run / "checkpoints" / name).is_file():
            return run / "checkpoints" / name
    raise UserError(f"run={run}: no checkpoint ({' or '.join(names)}) in {run / 'checkpoints'}; "
                    "a run writes them at each evaluation")


def load_policy(run: Path, checkpoint: str = "best") -> Policy:
    """Rebuild the run's algorithm from the config inside the checkpoint and load its state.

    The file decides only values: the algorithm class must be one the user trusts
    (config.check_file_config), and anything in it that does not fit is one line naming it."""
    path = find_checkpoint(Path(run), checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("algo"), dict):
        raise UserError(f"{path}: a checkpoint without the run's config and algorithm state")
    try:
        cfg = OmegaConf.create(upgrade_config(state["config"]))  # keys renamed since it was saved
        check_file_config(cfg, path)
        envs = make_vec_env(cfg.env.id, 1, **env_options(cfg.env))
        try:
            # the caller's torch RNG (a run in progress) is kept; devices=[]: the policy is
            # built on the CPU, and forking CUDA's generators would start CUDA on a GPU machine
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                algo = build_algo(cfg, envs.single_observation_space, envs.single_action_space)
        finally:
            envs.close()
        where = misfit(algo.state_dict(), state["algo"], "algo.") or next(
            (f"algo.{p} is NaN/Inf" for p in nonfinite_paths(state["algo"])), None)
        if where is not None:
            raise UserError(f"{path} does not fit its own config: {where}")
        algo.load_state_dict(state["algo"])
        steps = int(state.get("counters", {}).get("env_steps", 0))
    except UserError:
        raise
    except Exception as e:  # a config or state that is not what rl-run writes
        raise UserError(f"{path}: its config or algorithm state does not fit "
                        f"({type(e).__name__}: {one_line(e, 200)})") from None
    return Policy(algo=algo, config=cfg, checkpoint=path, env_steps=steps)
