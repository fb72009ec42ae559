"""env.envpool_async: EnvPool steps the next rollout while the algorithm learns from this one.

OverlappedCollector collects rollout k + 1 in a background thread while the trainer's update
runs on rollout k, so that the loop runs at about the speed of the slower of the two rather
than their sum: EnvPool's C++ threads step without Python's GIL, and the update's torch and
numpy calls release it often enough (with a 0.1 ms switch interval) for the acting thread to
keep the envs busy. The price is one update of policy lag: rollout k + 1 is acted by a frozen
copy of the policy from before update k. PPO's ratio is taken against the log-probabilities
that acted, so its clipping holds the update to the acting policy; each env's trajectory is
whole and exact, and the results do not depend on thread timing (the acting copy has its own
random stream, seeded from the run's seed).

The first rollout, and the first after a restart, is collected at once with the current policy.
"""
from __future__ import annotations

import copy
import sys
import threading

import gymnasium as gym
import numpy as np

from rl_runner.algos.contracts import OnPolicy
from rl_runner.errors import UserError
from rl_runner.rollout import RolloutCollector

SWITCH_INTERVAL = 1e-4  # seconds; Python's default 5 ms starved the acting thread (below)


class OverlappedCollector(RolloutCollector):
    """A RolloutCollector whose next rollout is collected while the update runs (module doc).

    With Python's default switch interval (5 ms) a LunarLander pool stepping in one thread
    beside a thread of small numpy operations ran 4.6k env steps/s (26k alone); at 0.1 ms,
    20k (2-core Intel Xeon, other work on the host)."""

    def __init__(self, envs: gym.vector.VectorEnv, n_steps: int, seed: int):
        super().__init__(envs, n_steps, seed)
        self.acting_rng = np.random.default_rng([seed, 1])  # apart from every seed + k stream
        self.buffers: list[dict | None] = [None, None]  # rollout k is read while k + 1 fills
        self.thread: threading.Thread | None = None
        self.outcome: dict = {}
        self.ready = None  # a finished background rollout not handed out yet
        self.switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)

    @staticmethod
    def check(algo: OnPolicy) -> None:
        """One line where an algorithm's acting cannot run on a frozen copy."""
        if getattr(getattr(algo, "obs_norm", None), "enabled", False):
            raise UserError("env.envpool_async=true acts with a frozen copy of the policy while "
                            "it learns, and algo.normalize_obs=true updates the statistics while "
                            "acting; allowed with it: algo.normalize_obs=false")

    def collect(self, algo: OnPolicy):
        actor = self._acting_copy(algo)  # the policy as it is before this update
        if self.ready is None and self.thread is None:  # nothing in flight: collect now
            result = self._collect_with(actor)
        else:
            result = self._take()
        self._start(actor)
        return result

    def _acting_copy(self, algo: OnPolicy) -> OnPolicy:
        """The policy frozen as it is now, drawing from the collector's own random stream."""
        actor = copy.deepcopy(algo)
        actor.rng = self.acting_rng
        return actor

    def _collect_with(self, actor: OnPolicy):
        self.buffers.reverse()
        self._buf = self.buffers[0]
        result = super().collect(actor)
        self.buffers[0] = self._buf
        return result

    def _start(self, actor: OnPolicy) -> None:
        def run():
            try:
                self.outcome["result"] = self._collect_with(actor)
            except BaseException as e:  # re-raised in the trainer's thread by _take
                self.outcome["error"] = e

        self.outcome = {}
        self.thread = threading.Thread(target=run, name="rl-runner-rollout", daemon=True)
        self.thread.start()

    def _join(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
            if "error" in self.outcome:
                raise self.outcome["error"]
            self.ready = self.outcome["result"]

    def _take(self):
        self._join()
        result, self.ready = self.ready, None
        return result

    def state_dict(self) -> dict:
        self._join()  # the rollout in flight ends first; collect hands it out next
        return super().state_dict()

    def restart_episodes(self, seed: int) -> None:
        if hasattr(self, "thread"):  # (not while RolloutCollector.__init__ starts the episodes)
            self._join()
            self.ready = None  # collected from the episodes being restarted: dropped
        super().restart_episodes(seed)

    def close(self) -> None:
        """Wait for the rollout in flight (the envs close next); its error, if any, is not
        raised here: the trainer is closing because of its own outcome, which must stand."""
        try:
            self._join()
        except BaseException:  # noqa: BLE001 - a rollout nobody will read
            pass
        finally:
            sys.setswitchinterval(self.switch)
