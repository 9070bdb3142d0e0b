"""Paired statistics of the replication study: Student t intervals over seeds and the claim verdicts.

Pure functions, no dependency beyond the standard library (scipy is not a dependency): the t
distribution's CDF for integer degrees of freedom has a closed form (a finite trigonometric series),
and the quantile is found by bisection on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["holds", "not shown", "reversed", "no interval"]


def t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (an integer >= 1) degrees of freedom, t >= 0.

    With theta = atan(t / sqrt(df)) and c = cos^2(theta): for odd df,
    2/pi * (theta + sin(theta) cos(theta) * (1 + 2/3 c + 2*4/(3*5) c^2 + ... up to c^((df-3)/2)));
    for even df, sin(theta) * (1 + 1/2 c + 1*3/(2*4) c^2 + ... up to c^((df-2)/2)).
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(1, (df - 1) // 2):  # terms c^1 .. c^((df-3)/2)
            term *= c * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):  # terms c^1 .. c^((df-2)/2)
        term *= c * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| < t) = ``level``: the half-width multiplier of a two-sided ``level`` interval."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(200):  # bisection to float precision
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """The mean of n values with its two-sided t interval (lo, hi both nan when n < 2)."""

    mean: float
    sd: float
    n: int
    lo: float
    hi: float

    def verdict(self, direction: int) -> Verdict:
        """``direction`` -1: the claim is that the value is below zero; +1: above. "holds" when the
        interval excludes zero on the claimed side, "reversed" when it excludes zero on the other side,
        "not shown" when it contains zero."""
        if self.n < 2:
            return "no interval"
        if direction not in (-1, 1):
            raise ValueError(f"direction is -1 or +1, got {direction}")
        if self.lo > 0:
            return "holds" if direction > 0 else "reversed"
        if self.hi < 0:
            return "holds" if direction < 0 else "reversed"
        return "not shown"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The t interval of the mean of ``values`` (for paired differences: the per-seed differences)."""
    mean, sd = mean_sd(values)
    n = len(values)
    if n < 2:
        return Interval(mean, sd, n, math.nan, math.nan)
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd, n, mean - half, mean + half)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def paired_t_power(shift: float, df: int, level: float = 0.95, steps: int = 4000) -> float:
    """Power of the two-sided paired t test at ``level`` when the mean difference is ``shift`` standard
    errors (the noncentrality sqrt(n) * effect / sd), with ``df`` = n - 1.

    T = (Z + shift) / S with S = sqrt(chi2_df / df); the test rejects when |T| > t_crit, so the power
    is the mean over S of Phi(shift - t_crit S) + Phi(-shift - t_crit S): integrated over S's density
    (2 (df/2)^(df/2) / Gamma(df/2) s^(df-1) exp(-df s^2 / 2)) by Simpson's rule on [0, 10].
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    crit = t_quantile(level, df)
    log_norm = math.log(2) + (df / 2) * math.log(df / 2) - math.lgamma(df / 2)
    width = 10.0 / steps
    total = 0.0
    for i in range(steps + 1):
        s = i * width
        density = 0.0 if s == 0 and df > 1 else math.exp(log_norm + (df - 1) * math.log(s or 1.0) - df * s * s / 2)
        weight = 1 if i in (0, steps) else (4 if i % 2 else 2)
        total += weight * density * (_normal_cdf(shift - crit * s) + _normal_cdf(-shift - crit * s))
    return total * width / 3


def minimal_detectable_effect(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest true mean difference a paired t test over ``n`` seeds detects with probability
    ``power`` at ``level``, given a per-seed sd of the differences ``sd`` (exact, noncentral t)."""
    if n < 2:
        return math.nan
    lo, hi = 0.0, 1.0
    while paired_t_power(hi, n - 1, level) < power:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_t_power(mid, n - 1, level) < power else (lo, mid)
    return (lo + hi) / 2 * sd / math.sqrt(n)
