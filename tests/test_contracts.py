"""build_algo holds every algorithm to its family's contract (rl_runner/algos/contracts.py): a
class that breaks it is one line naming what is missing, never a traceback from the trainer."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rl_runner.algos.build import build_algo
from rl_runner.algos.contracts import FAMILIES, Offline, OffPolicy, OnPolicy
from rl_runner.errors import UserError
from tests.conftest import compose

CARTPOLE = (gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2))


def build(target: str):
    cfg = compose(["env=cartpole"])
    cfg.algo = {"_target_": target}
    return build_algo(cfg, *CARTPOLE)


@pytest.mark.parametrize("target, message", [
    ("tests.helpers.bad_algos.Plain", "is not an algorithm: it must subclass OnPolicy"),
    ("tests.helpers.bad_algos.NoExplore", "does not write explore"),
    ("tests.helpers.bad_algos.NoSteps", "is OnPolicy but has no n_steps"),
    ("tests.helpers.bad_algos.Divides", "cannot be built with these hyperparameters "
                                        "(ZeroDivisionError: division by zero)"),
])
def test_a_class_that_breaks_its_contract_is_one_line(target, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(target)


def test_every_bundled_algorithm_fits_its_family():
    from rl_runner.algos.build import algo_class
    from rl_runner.config import group_choices

    for name in group_choices("algo"):
        cls = algo_class(compose([f"algo={name}"]))
        assert issubclass(cls, tuple(FAMILIES.values())) and not cls.__abstractmethods__, name
    assert {OnPolicy.family, OffPolicy.family, Offline.family} == set(FAMILIES)
    assert Offline.step_unit == "gradient steps" and OnPolicy.step_unit == "env steps"


def test_declared_choices_are_those_the_code_takes():
    import typing

    from rl_runner.algos.gail import GAIL, LEARNERS, REWARDS
    from rl_runner.nets import ACTIVATIONS
    from rl_runner.params import Activation

    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)
    hints = typing.get_type_hints(GAIL.__init__, include_extras=True)
    assert set(typing.get_args(hints["learner"])) == set(LEARNERS)
    assert set(typing.get_args(hints["reward"])) == set(REWARDS)


def test_a_state_dict_that_is_not_plain_data_is_refused_before_training():
    with pytest.raises(UserError, match=r"state_dict\(\) is not plain data \(algo.thing is a "
                                        r"tests.helpers.bad_algos.Thing\)"):
        build("tests.helpers.bad_algos.ObjectState")


@pytest.mark.parametrize("metrics", [1.0, {"loss": "x"}, {"loss": True}, {1: 2.0}, None])
def test_update_returns_metric_names_to_numbers(metrics):
    from rl_runner.algos.contracts import check_metrics

    check_metrics("a", {"loss": 1.0, "n": np.float32(2), "k": 3})
    with pytest.raises(UserError, match="a.update returned .*; expected a dict of metric names"):
        check_metrics("a", metrics)


def test_resume_refuses_counters_off_the_budget_and_a_logger_state_of_the_wrong_kind():
    from rl_runner.runstate import budget_misfit, logger_misfit

    assert budget_misfit(512, 256, 1024) is None and budget_misfit(1024, 256, 1024) is None
    assert "beyond this run's budget of 1024" in budget_misfit(10**12, 256, 1024)
    assert "not a whole number of updates of 256" in budget_misfit(1001, 256, 4096)
    assert logger_misfit(None) is None and logger_misfit({"mlflow": {"run_id": "ab"}}) is None
    for bad in ({"mlflow": {"run_id": 5}}, "x", {"mlflow": []}, {"tb": {"a": None}}):
        assert logger_misfit(bad) is not None
