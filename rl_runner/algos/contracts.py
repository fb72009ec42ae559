"""What the trainer and the feeders need from an algorithm, family by family.

An algorithm subclasses the base of its family (OnPolicy, OffPolicy or Offline). Abstract methods
must be written; the other methods are optional hooks whose defaults fit most algorithms, and the
annotated attributes are what the family's feeder reads. The trainer and the feeders use only what
is declared here: nothing is discovered by probing.
"""
from __future__ import annotations

import functools
import inspect
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from rl_runner.config import PROVIDED, check_algo_kwargs
from rl_runner.errors import UserError


def constructor_params(cls: type) -> set[str]:
    """The parameter names of a class's constructors, its own and its bases' (those it passes
    keywords on to): what build_algo may hand it (`device`), what gail shares with its learner."""
    return {name for klass in cls.__mro__ if "__init__" in klass.__dict__ and klass is not object
            for name in inspect.signature(klass.__dict__["__init__"]).parameters}


class Algorithm(ABC):
    """Every algorithm: acting, one update from a batch, and its state as plain data."""

    name: ClassVar[str] = ""  # the algo= choice it is known by
    family: ClassVar[str] = ""  # set by the family bases below
    step_unit: ClassVar[str] = "env steps"  # what the budget and the curves' x axis count
    action_spaces: ClassVar[tuple[type, ...]] = (gym.spaces.Discrete, gym.spaces.Box)
    # imitation beside an env (gail): the trainer hands fit_dataset the dataset.* rows first
    uses_demonstrations: ClassVar[bool] = False
    # keys of a base class's constructor that this class sets itself (ddpg: td3's policy delay
    # and target smoothing): not algo.* keys of it, refused and left out of its allowed list
    fixed_keys: ClassVar[tuple[str, ...]] = ()
    grad_steps: int = 0  # gradient steps taken so far (results.json, checkpoints)
    # where its networks live: trainer.device as build_algo resolved it, for classes whose
    # constructor takes `device` (they set it); the CPU for the rest
    device: torch.device = torch.device("cpu")

    def __init_subclass__(cls, **kwargs):
        """Every constructor's keyword arguments are checked against its declared hints
        (rl_runner/params.py: Literal choices, ranges) before it runs, however it is called."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "__wrapped__"):
            cls.__init__ = _checked(init)

    @classmethod
    def supports(cls, action_space: gym.Space) -> bool:
        return isinstance(action_space, cls.action_spaces)

    @classmethod
    def variant_for(cls, action_space: gym.Space) -> type[Algorithm]:
        """The class that is built for this action space under this algo= name: itself, unless
        the algorithm has a separate class per space (its keys are then that class's)."""
        return cls

    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Env actions for a batch of observations (evaluation, rl-eval, rl-collect)."""

    @abstractmethod
    def update(self, batch: Any) -> dict[str, float]:
        """One learning step on the family's batch (rl_runner/batches.py); returns metrics."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Tensors, arrays, numbers, strings, lists and dicts only (checkpoints are not pickles)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def preferred_threads(self, cores: int) -> int:
        """Torch threads for trainer.torch_threads=auto: one, fastest for small networks, and for
        a CNN on a shared CPU too: ppo breakout (8192 steps, Intel Xeon, 2 cores shared with other
        work) ran 307 env steps/s on one thread and 83 on every core (OpenMP's waiting workers
        spin while the other core is busy). An algorithm that asks for more gets the
        ThreadTuner (the on-policy ones with a CNN, sac with big matmuls)."""
        return 1

    def fit_dataset(self, data: Any) -> None:
        """Offline: the training rows, before the first update; imitation: the expert's rows."""

    def summary(self) -> str | None:
        """A line about the whole run for the log at its end, if the algorithm keeps one."""
        return None


class OnPolicy(Algorithm):
    """Learns from fresh rollouts of n_steps x n_envs (rl_runner/rollout.py)."""

    family = "on_policy"
    n_steps: int  # env steps per env in one rollout
    # env.envpool_async: rollout k + 1 is acted by a copy of the policy from before update k and
    # stepped between that update's optimizer steps. Only for a loss that weighs each sample by
    # its probability under the learning policy over the acting one's (ppo's and trpo's ratio),
    # so that the lag is corrected for; such a class calls on_grad_step, where the collector has
    # set it, after each optimizer step (a copy of the algorithm gets None in its place)
    overlaps_rollouts: ClassVar[bool] = False
    on_grad_step: Callable[[], None] | None = None

    @abstractmethod
    def explore(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        """(env_actions, actions, log_probs, values, policy_obs) for one vector step."""

    @abstractmethod
    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(obs) [N], to bootstrap rollouts cut by their end or by a time limit."""


class OffPolicy(Algorithm):
    """Learns from batches of a replay buffer that the feeder fills (rl_runner/replay.py)."""

    family = "off_policy"
    n_steps: int  # env steps per env between updates (train_freq)
    learning_starts: int  # transitions stored, with random actions, before the first update
    buffer_size: int
    buffer_action_dim: int  # the width of one stored action
    gradient_steps: int  # minibatches per update
    batch_size: int
    # what the replay batches hold (rl_runner/batches.py ReplayBatch); the defaults give one-step
    # transitions drawn uniformly, and leave the batch's optional fields None
    n_step: int = 1  # rewards summed per transition, discounted by gamma (batch.steps)
    gamma: float = 0.99  # the discount of those sums (read where n_step > 1)
    prioritized: bool = False  # proportional prioritized replay (batch.weights, batch.indices)
    per_alpha: float = 0.6  # where prioritized: rows are drawn with probability ~ priority^alpha

    def per_beta(self, env_steps: int) -> float:
        """Where prioritized: the exponent of the importance-sampling weights at this step."""
        return 1.0

    def take_priorities(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Where prioritized: (batch.indices, new priorities) of the batches learnt from since
        the last call, then forgotten; the feeder calls it before it samples and before it saves
        the buffer. None: nothing new."""
        return None

    @abstractmethod
    def explore(self, obs: np.ndarray) -> np.ndarray:
        """Actions of the exploration policy, in the space the buffer stores (policy space)."""

    @abstractmethod
    def random_actions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform policy-space actions for the learning_starts warm-up."""

    @abstractmethod
    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Policy-space actions as the env takes them."""


class Offline(Algorithm):
    """Learns from a fixed dataset; no env is stepped while learning (rl_runner/offline.py)."""

    family = "offline"
    step_unit = "gradient steps"
    batch_size: int
    val_fraction: float = 0.0  # rows held out for `validate`

    def validate(self, rows: Any) -> dict[str, float]:
        """Metrics on the held-out rows, logged beside the losses."""
        return {}


FAMILIES: dict[str, type[Algorithm]] = {"on_policy": OnPolicy, "off_policy": OffPolicy,
                                         "offline": Offline}


def check_contract(algo: Algorithm, name: str) -> None:
    """The algorithm subclasses a family base and has the attributes its feeder reads: one line
    naming what is missing, for an algorithm written outside rl-runner."""
    base = next((b for b in FAMILIES.values() if isinstance(algo, b)), None)
    if base is None:
        raise UserError(f"algorithm {name} ({type(algo).__module__}.{type(algo).__name__}) does "
                        "not subclass a family base of rl_runner.algos.contracts (OnPolicy, "
                        "OffPolicy, Offline)")
    declared = {k for klass in base.__mro__ for k in getattr(klass, "__annotations__", {})
                if not hasattr(klass, k)}
    missing = sorted(k for k in declared if not hasattr(algo, k))
    methods = {m for klass in base.__mro__ for m in getattr(klass, "__abstractmethods__", ())}
    missing += sorted(m for m in methods if not callable(getattr(algo, m, None)))
    if missing:
        raise UserError(f"algorithm {name} is {base.__name__} but has no {', '.join(missing)} "
                        f"(rl_runner/algos/contracts.py)")


def algo_name(cls: type[Algorithm]) -> str:
    """The name an algorithm goes by in messages and results: its algo= choice, or its class."""
    return cls.name or cls.__name__.lower()


def check_metrics(name: str, metrics: Any) -> None:
    """`update` returns metric names to numbers: one line where an algorithm returns else."""
    if not (isinstance(metrics, dict) and all(
            isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool)
            for k, v in metrics.items())):
        raise UserError(f"{name}.update returned {str(metrics)[:80]!r}; expected a dict of metric "
                        "names to numbers")


def _checked(init):
    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        if type(self).__init__ is checked:  # the outermost constructor checks for all
            check_algo_kwargs(algo_name(type(self)), type(self),
                              {k: v for k, v in kwargs.items() if k not in PROVIDED}, PROVIDED)
        init(self, *args, **kwargs)
    return checked
