"""The study's statistics on crafted numbers: t quantiles against published tables, intervals, verdicts."""

import math

import pytest

from lory_lightning.replication.stats import interval, mean_sd, t_quantile, t_two_sided


@pytest.mark.parametrize("df, expected", [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451),
                                          (5, 2.5705818), (9, 2.2621572), (30, 2.0422725), (100, 1.9839715)])
def test_t_quantile_matches_the_published_table(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_closed_forms_and_the_normal_limit():
    assert t_two_sided(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| < 1) = 1/2
    assert t_two_sided(math.sqrt(2), 2) == pytest.approx(math.sqrt(2) / 2)  # df 2: t / sqrt(2 + t^2)
    assert t_quantile(0.99, 10) == pytest.approx(3.1692727, abs=1e-6)
    assert t_quantile(0.95, 2000) == pytest.approx(1.959964, abs=2e-3)  # the normal's 1.96
    with pytest.raises(ValueError, match="positive integer"):
        t_two_sided(1.0, 0)


def test_the_issues_three_seed_example_is_not_shown():
    """Issue 17: differences -3.1%, -6.6%, -3.1% (Lory better every time) give an interval that
    includes zero: a t interval over 3 values is wide."""
    iv = interval([-3.1, -6.6, -3.1])
    assert iv.mean == pytest.approx(-4.2667, abs=1e-4) and iv.sd == pytest.approx(2.0207, abs=1e-4)
    assert (iv.lo, iv.hi) == (pytest.approx(-9.2862, abs=1e-3), pytest.approx(0.7529, abs=1e-3))
    assert iv.verdict(-1) == "not shown" and iv.verdict(+1) == "not shown"


def test_verdicts_follow_the_side_the_interval_excludes():
    below = interval([-3.0, -2.5, -3.5, -2.8, -3.2])
    assert below.hi < 0 and below.verdict(-1) == "holds" and below.verdict(+1) == "reversed"
    above = interval([1.0, 1.2, 0.9, 1.1, 1.0])
    assert above.lo > 0 and above.verdict(+1) == "holds" and above.verdict(-1) == "reversed"
    one = interval([2.0])
    assert one.verdict(+1) == "no interval" and math.isnan(one.lo) and math.isnan(one.sd)
    # zero spread: the interval is the point itself
    flat = interval([0.5] * 5)
    assert (flat.lo, flat.hi) == (0.5, 0.5) and flat.verdict(+1) == "holds"


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(1.2909944))
    with pytest.raises(ValueError):
        mean_sd([])


def test_power_is_the_level_at_no_effect_and_the_normal_limit_for_many_seeds():
    from lory_lightning.replication.stats import minimal_detectable_effect, paired_t_power

    for df in (1, 4, 30):
        assert paired_t_power(0.0, df) == pytest.approx(0.05, abs=1e-8)  # rejects 5% of null studies
    # many seeds: z_0.975 + z_0.8 standard errors
    assert minimal_detectable_effect(1.0, 400) * 20 == pytest.approx(1.959964 + 0.841621, abs=0.01)
    assert math.isnan(minimal_detectable_effect(1.0, 1))


def test_minimal_detectable_effect_has_the_power_it_claims_by_simulation():
    import numpy as np

    from lory_lightning.replication.stats import minimal_detectable_effect, t_quantile

    n, sd = 5, 2.7
    effect = minimal_detectable_effect(sd, n)
    assert effect / sd == pytest.approx(1.682, abs=0.002)  # Cohen's d a 5-seed paired test detects at 80%
    x = np.random.default_rng(0).normal(effect, sd, size=(200_000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    assert (abs(t) > t_quantile(0.95, n - 1)).mean() == pytest.approx(0.80, abs=0.004)
    assert minimal_detectable_effect(sd, 10) < effect  # more seeds detect less
