"""Hyperparameter types that carry their allowed values, declared with the parameter itself.

An algorithm's constructor says `lr: PositiveFloat = 3e-4` or `activation: Activation = "tanh"`;
rl_runner.config.check_value reads the hint (Literal choices, an Annotated Range) and refuses
anything else with one line, for every algorithm alike, before the class is called.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal


@dataclass(frozen=True)
class Range:
    """Closed bounds by default; `open_low`/`open_high` exclude the bound itself."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def adjective(self) -> str:
        """`positive int`, `float in [0, 1]`: how a type name says the range."""
        if self.high == math.inf and self.low == 0:
            return "positive" if self.open_low else "non-negative"
        return self.describe().replace("must lie ", "").replace("must be ", "")

    def describe(self) -> str:
        if self.high == math.inf:
            if self.low == 0:
                return "must be positive" if self.open_low else "must not be negative"
            return f"must be {'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"must lie in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)

PositiveInt = Annotated[int, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
Fraction = Annotated[float, UNIT]  # a probability, a discount, an interpolation weight
HoldOut = Annotated[float, Range(0, 1, open_high=True)]  # a share of rows held out
Sizes = list[PositiveInt]  # hidden layer widths

Activation = Literal["tanh", "relu"]  # rl_runner.nets.ACTIVATIONS
