"""env.envpool_async: EnvPool steps the next rollout while the algorithm learns from this one.

OverlappedCollector collects rollout k + 1 during the update on rollout k, in the trainer's own
thread: after each of the update's optimizer steps (the algorithm's on_grad_step) it takes the
results of the envs' last step, acts on them and hands EnvPool the next actions, and EnvPool's
C++ threads step those while the update goes on. Where the update takes at least as many
optimizer steps as the rollout has env steps (ppo: epochs x minibatches), every env step but
the last overlaps learning; with fewer, several env steps follow each optimizer step and only
the last of them does. There is no second Python thread to take turns on the GIL, and no
switch interval to set for the whole process (the design before this one acted in a background
thread: ppo lunarlander 1M steps, alternated on an AMD EPYC Zen 4 with 2 cores, 38.1 and 38.7 s
against 36.1 and 36.2 s here, the same returns; without overlap 46.6 s).

The price is one update of policy lag: rollout k + 1 is acted by a frozen copy of the policy
from before update k. ppo clips around the policy as it is at the start of the update and
weighs each sample by its probability now over the acting one (PPO.proximal); trpo's surrogate
is taken against the acting log-probabilities. Each env's trajectory is whole and exact, and
the results do not depend on timing (the acting copy has its own random stream, seeded from the
run's seed; how many env steps go between two optimizer steps changes no number).

The first rollout, and the first after a restart, is collected at once with the current policy;
what the update leaves of the next rollout is collected when the trainer asks for it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Generator

import gymnasium as gym
import numpy as np

from rl_runner.algos.contracts import OnPolicy
from rl_runner.errors import UserError
from rl_runner.rollout import RolloutCollector, finish


def _none() -> None:
    return None


class GradStepHook:
    """The on_grad_step the collector sets on an algorithm. A copy or a pickle of the algorithm
    gets None in its place: the hook holds the collector and its envs, which a copy must not
    take along (nor step)."""

    __slots__ = ("step",)

    def __init__(self, step):
        self.step = step

    def __call__(self) -> None:
        self.step()

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return _none, ()


class OverlappedCollector(RolloutCollector):
    """A RolloutCollector whose next rollout is stepped between the update's optimizer steps
    (module doc). The envs need gymnasium's step_async / step_wait (EnvPoolVectorEnv)."""

    def __init__(self, envs: gym.vector.VectorEnv, n_steps: int, seed: int):
        super().__init__(envs, n_steps, seed)
        self.acting_rng = np.random.default_rng([seed, 1])  # apart from every seed + k stream
        self.buffers: list[dict | None] = [None, None]  # rollout k is read while k + 1 fills
        self.pending: Generator | None = None  # the next rollout, part collected
        self.ready = None  # the next rollout, whole, not handed out yet
        self.in_flight = False  # the envs are stepping: step_wait comes before anything else
        self.per_step = 1  # env steps after each optimizer step
        self.grad_steps = 0  # optimizer steps during the current update
        self.hooked: OnPolicy | None = None  # the algorithm whose on_grad_step steps the envs

    @staticmethod
    def allows(algo: OnPolicy) -> bool:
        """Whether the algorithm's acting can run on a frozen copy (check's one line if not)."""
        return not getattr(getattr(algo, "obs_norm", None), "enabled", False)

    @staticmethod
    def check(algo: OnPolicy) -> None:
        if not OverlappedCollector.allows(algo):
            raise UserError("env.envpool_async=true acts with a frozen copy of the policy while "
                            "it learns, and algo.normalize_obs=true updates the statistics while "
                            "acting; allowed with it: algo.normalize_obs=false")

    def collect(self, algo: OnPolicy):
        actor = self._acting_copy(algo)  # the policy as it is before this update
        if self.ready is None and self.pending is None:  # nothing under way: collect now
            result = finish(self._rollout_with(actor))
        else:
            result = self._take()
        if self.grad_steps:  # spread the next rollout over as many steps as the last update had
            self.per_step = math.ceil(self.n_steps / self.grad_steps)
        self.grad_steps = 0
        self.pending = self._rollout_with(actor)
        algo.on_grad_step, self.hooked = GradStepHook(self._step_envs), algo
        return result

    def _acting_copy(self, algo: OnPolicy) -> OnPolicy:
        """The policy frozen as it is now, drawing from the collector's own random stream."""
        actor = copy.deepcopy(algo)
        actor.rng = self.acting_rng
        return actor

    def _rollout_with(self, actor: OnPolicy):
        self.buffers.reverse()
        self._buf = self.buffers[0]
        result = yield from self._rollout(actor)
        self.buffers[0] = self._buf
        return result

    def _send(self, actions: np.ndarray) -> None:
        self.envs.step_async(actions)
        self.in_flight = True

    def _wait(self) -> tuple:
        # cleared first: an interrupt that lands between the two leaves at worst a step nobody
        # reads (EnvPool's threads finish it), where a flag cleared after could make close wait
        # for a step that was already taken, for ever
        self.in_flight = False
        return self.envs.step_wait()

    def _drop_pending(self) -> None:
        """Give up the rollout under way; a step the envs are taking is waited for first."""
        if self.pending is not None:
            self.pending.close()
            self.pending = None
        if self.in_flight:
            self._wait()

    def _step_envs(self) -> None:
        """on_grad_step: the next rollout's next env steps (its last one ends it)."""
        self.grad_steps += 1
        for _ in range(self.per_step):
            if self.pending is None:
                return
            try:
                next(self.pending)
            except StopIteration as done:
                self.pending, self.ready = None, done.value
            except BaseException:
                self.pending = None
                raise

    def _finish_pending(self) -> None:
        """What the update left of the next rollout, collected now."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.ready = finish(pending)

    def _take(self):
        self._finish_pending()
        result, self.ready = self.ready, None
        return result

    def state_dict(self) -> dict:
        self._finish_pending()  # the rollout under way ends first; collect hands it out next
        return {**super().state_dict(), "acting_rng": self.acting_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "acting_rng" in state:  # (absent in checkpoints of runs without the overlap)
            self.acting_rng.bit_generator.state = state["acting_rng"]

    def restart_episodes(self, seed: int) -> None:
        if hasattr(self, "pending"):  # (not while RolloutCollector.__init__ starts the episodes)
            self._drop_pending()
        self.ready = None  # collected from the episodes being restarted: dropped
        super().restart_episodes(seed)

    def close(self) -> None:
        """Drop the rollout under way (the envs close next); an error from its last step is
        not raised here: the trainer is closing because of its own outcome, which must stand."""
        if self.hooked is not None:
            self.hooked.on_grad_step = self.hooked = None
        try:
            self._drop_pending()
        except Exception:  # noqa: BLE001 - a step nobody will read
            self.in_flight = False
