"""The statistics of a reproduced table: a row's mean and standard deviation over seeds, the
paired difference against the baseline row over the seeds both have (mean and a t-interval),
whether its sign is the paper's, and Kendall's tau between the paper's values and ours.

A missing value is ``None`` throughout, never 0: a quantity that cannot be computed (no value,
one value for a standard deviation or an interval) is ``None`` too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from scipy import stats


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: Optional[float]  # sample standard deviation (n - 1); None for n = 1


@dataclass(frozen=True)
class Interval:
    """A paired difference over ``n`` seeds: its mean and a two-sided ``confidence`` t-interval
    (``low``/``high`` None for n = 1)."""

    n: int
    mean: float
    low: Optional[float]
    high: Optional[float]
    confidence: float = 0.95


def summarize(values: Sequence[Optional[float]]) -> Optional[Summary]:
    """Mean and sample standard deviation of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    n = len(present)
    mean = math.fsum(present) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in present) / (n - 1)) if n > 1 else None
    return Summary(n=n, mean=mean, std=std)


def paired_difference(row: Mapping[int, Optional[float]], baseline: Mapping[int, Optional[float]],
                      confidence: float = 0.95) -> Optional[Interval]:
    """``row - baseline`` over the seeds where both have a value: the mean difference and its
    ``confidence`` interval ``mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)``."""
    differences = [row[seed] - baseline[seed] for seed in sorted(row)
                   if row[seed] is not None and baseline.get(seed) is not None]
    summary = summarize(differences)
    if summary is None:
        return None
    if summary.std is None:
        return Interval(n=1, mean=summary.mean, low=None, high=None, confidence=confidence)
    half = stats.t.ppf((1 + confidence) / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return Interval(n=summary.n, mean=summary.mean, low=summary.mean - half, high=summary.mean + half,
                    confidence=confidence)


def sign_agrees(ours: Optional[float], paper: float) -> Optional[bool]:
    """Whether our difference has the paper's sign; None when ours is missing or either is exactly 0."""
    if ours is None or ours == 0 or paper == 0:
        return None
    return (ours > 0) == (paper > 0)


@dataclass(frozen=True)
class Tau:
    n: int  # rows with both values
    tau: float
    p: float


def kendall_tau(paper: Sequence[float], ours: Sequence[Optional[float]]) -> Optional[Tau]:
    """Kendall's tau-b between the paper's values and ours over the rows where ours is present
    (scipy.stats.kendalltau); None for fewer than two such rows; ``tau`` is NaN when either side
    is constant."""
    pairs = [(p, o) for p, o in zip(paper, ours) if o is not None]
    if len(pairs) < 2:
        return None
    tau, p = stats.kendalltau([p for p, _ in pairs], [o for _, o in pairs])
    return Tau(n=len(pairs), tau=float(tau), p=float(p))
