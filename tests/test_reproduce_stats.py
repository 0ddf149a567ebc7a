"""segrepro.reproduce.stats against values computed by hand."""
from __future__ import annotations

import math

import pytest

from segrepro.reproduce.stats import kendall_tau, paired_difference, sign_agrees, summarize


def test_mean_and_sample_std():
    summary = summarize([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (n - 1) = 5/3
    assert (summary.n, summary.mean, summary.std) == (4, 2.5, pytest.approx(math.sqrt(5 / 3)))


def test_missing_values_are_left_out_never_zero():
    assert summarize([None, 3.0, None, 5.0]) == summarize([3.0, 5.0])
    assert summarize([None, None]) is None and summarize([]) is None
    one = summarize([None, 7.0])
    assert (one.n, one.mean, one.std) == (1, 7.0, None)


def test_paired_difference_and_its_t_interval():
    row = {0: 2.0, 1: 4.0, 2: 5.0, 3: 9.0}
    baseline = {0: 1.0, 1: 2.0, 2: 4.0, 3: None}  # seed 3 has no baseline: not paired
    delta = paired_difference(row, baseline)
    # differences 1, 2, 1: mean 4/3, sd sqrt(1/3); t(0.975, 2) = 4.302653; half width 4.302653 * sqrt(1/3) / sqrt(3)
    half = 4.302653 * math.sqrt(1 / 3) / math.sqrt(3)
    assert delta.n == 3 and delta.mean == pytest.approx(4 / 3)
    assert (delta.low, delta.high) == (pytest.approx(4 / 3 - half, abs=1e-5), pytest.approx(4 / 3 + half, abs=1e-5))
    assert (delta.low, delta.high) == (pytest.approx(-0.100885, abs=1e-5), pytest.approx(2.767552, abs=1e-5))


def test_paired_difference_of_one_or_no_pair():
    one = paired_difference({0: 3.0, 1: None}, {0: 1.0, 1: 2.0})
    assert (one.n, one.mean, one.low, one.high) == (1, 2.0, None, None)
    assert paired_difference({0: None}, {0: 1.0}) is None
    # two pairs: differences 1 and 3, mean 2, sd sqrt(2); t(0.975, 1) = 12.706205: half 12.706205
    two = paired_difference({0: 41.0, 1: 45.0}, {0: 40.0, 1: 42.0})
    assert (two.low, two.high) == (pytest.approx(2 - 12.706205, abs=1e-5), pytest.approx(2 + 12.706205, abs=1e-5))


def test_sign_agreement():
    assert sign_agrees(0.5, 2.13) is True and sign_agrees(-0.5, -1.25) is True
    assert sign_agrees(-0.5, 0.41) is False and sign_agrees(0.1, -0.1) is False
    assert sign_agrees(None, 1.0) is None and sign_agrees(0.0, 1.0) is None and sign_agrees(1.0, 0.0) is None


def test_kendall_tau():
    # ours swaps the last two of three: 2 concordant pairs, 1 discordant: (2 - 1) / 3
    tau = kendall_tau([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    assert (tau.n, tau.tau) == (3, pytest.approx(1 / 3))
    assert kendall_tau([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]).tau == pytest.approx(1.0)
    assert kendall_tau([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]).tau == pytest.approx(-1.0)
    # a missing row drops out: the two left agree
    assert kendall_tau([1.0, 2.0, 3.0], [None, 5.0, 6.0]).n == 2
    assert kendall_tau([1.0, 2.0], [None, 5.0]) is None
