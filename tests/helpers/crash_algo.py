"""PPOs that end their own process hard in seed 1: a sweep job that dies without recording
anything (rl_runner.isolation). Used through the plugin path a user would take:
algo._target_=tests.helpers.crash_algo.ExitInSeed1PPO
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from rl_runner.algos.ppo import PPO

DYING_SEED = 1
PID_DIR = "RL_TEST_PID_DIR"  # when set: each training process writes <dir>/<pid> (its seed)


class ExitInSeed1PPO(PPO):
    """In seed 1, its second update ends the process with os._exit(3)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dies = kwargs.get("seed") == DYING_SEED
        self.seed_ = kwargs.get("seed")

    def update(self, batch):
        # on the first update, not in __init__: rl-run also builds the algorithm up front, in its
        # own process, to check the config
        if self.grad_steps == 0 and os.environ.get(PID_DIR):
            Path(os.environ[PID_DIR]).mkdir(parents=True, exist_ok=True)
            (Path(os.environ[PID_DIR]) / str(os.getpid())).write_text(str(self.seed_))
        if self.dies and self.grad_steps > 0:
            self.die()
        return super().update(batch)

    def die(self) -> None:
        os._exit(3)


class KilledInSeed1PPO(ExitInSeed1PPO):
    """In seed 1, its second update SIGKILLs its own process, as the out-of-memory killer does."""

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
