"""rl_runner.stats against numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from rl_runner.stats import bootstrap_ci, iqm, mean_std


def test_iqm_drops_a_quarter_from_each_end():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # mean(3, 4, 5, 6)
    assert iqm([100, 7, 1, 6, 2, 5, 3, 4]) == pytest.approx(4.5)  # order does not matter
    # n = 5: int(1.25) = 1 value cut from each end, as scipy.stats.trim_mean(x, 0.25)
    assert iqm([0, 1, 2, 3, 1000]) == pytest.approx(2.0)


def test_iqm_of_fewer_than_four_values_is_the_mean():
    assert iqm([1, 2, 9]) == pytest.approx(4.0)
    assert iqm([7]) == 7.0
    with pytest.raises(ValueError):
        iqm([])


def test_iqm_along_an_axis():
    rows = np.array([[1, 2, 3, 4, 5, 6, 7, 100], [1, 2, 9, 9, 9, 9, 9, 9]])
    assert iqm(rows, axis=1) == pytest.approx([4.5, 9.0])


def test_mean_std_uses_the_sample_std():
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5
    assert std == pytest.approx(np.sqrt(5 / 3))  # sum of squares 5, over n - 1 = 3
    assert mean_std([3.0]) == (3.0, None)


def test_bootstrap_of_two_values_is_their_range():
    # resampled means: 1 (p 1/4), 1.5 (p 1/2), 2 (p 1/4): the 2.5% and 97.5% quantiles are 1 and 2
    assert bootstrap_ci([1, 2]) == (1.0, 2.0)


def test_bootstrap_of_one_value_and_of_none():
    assert bootstrap_ci([3.5]) == (3.5, 3.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_seeds():
    spread = np.array([-1.0, 1.0])  # the same spread at every n
    widths = []
    for n in (4, 16, 64):
        values = 10 + np.tile(spread, n // 2)
        low, high = bootstrap_ci(values)
        assert low < values.mean() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # the standard error of the mean halves when n quadruples; so does the percentile interval
    assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.15)


def test_bootstrap_is_deterministic_per_seed():
    values = [3.0, 8.0, 1.0, 9.5, 4.0]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_bootstrap_of_another_statistic():
    low, high = bootstrap_ci([1, 2, 3, 4, 5, 6, 7, 100], statistic=iqm)
    assert 1.0 <= low <= 4.5 <= high < 100  # the IQM ignores the outlier the mean would chase
    assert high <= bootstrap_ci([1, 2, 3, 4, 5, 6, 7, 100])[1]
