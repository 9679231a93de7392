"""The collapse detector's statistics against published tables and the test's own definition."""

import math
import random

import pytest

from fgm_report.stats import esd_outliers, student_t_cdf, student_t_quantile

# Student t quantiles from the standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE = [
    (0.975, 1, 12.706),
    (0.975, 5, 2.571),
    (0.975, 10, 2.228),
    (0.95, 30, 1.697),
    (0.995, 3, 5.841),
    (0.999, 8, 4.501),
    (0.90, 2, 1.886),
    (0.95, 100, 1.660),
]


@pytest.mark.parametrize("p,df,t", T_TABLE)
def test_student_t_quantile_matches_the_table(p, df, t):
    assert student_t_quantile(p, df) == pytest.approx(t, abs=1.5e-3)
    assert student_t_quantile(1 - p, df) == pytest.approx(-t, abs=1.5e-3)


def test_student_t_cdf_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-30.0, -2.0, -0.3, 0.0, 0.7, 4.0, 250.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    # large df: the normal distribution
    assert student_t_cdf(1.959964, 1e7) == pytest.approx(0.975, abs=1e-6)
    with pytest.raises(ValueError):
        student_t_quantile(1.0, 3)


def test_esd_critical_value_written_out():
    """lambda_1 for n = 10 at alpha = 0.05, from the formula with the tabled t (0.9975, 8 df) = 3.832."""
    t = 3.832
    lam = 9 * t / math.sqrt((8 + t * t) * 10)
    # values whose first statistic R_1 sits just above / below lambda_1: nine zeros-ish and one x
    base = [-0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, 0.0]

    def r1(x: float) -> float:
        vals = base + [x]
        mean = sum(vals) / 10
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 9)
        return (x - mean) / sd

    lo, hi = 0.0, 100.0  # find x with R_1(x) = lambda_1 (R_1 grows with x, towards 9/sqrt(10))
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if r1(mid) < lam else (lo, mid)
    assert esd_outliers(base + [hi * 1.001], 0.05, 1)[0] == [9]
    assert esd_outliers(base + [hi * 0.999], 0.05, 1)[0] == []


def test_esd_finds_planted_outliers_and_rarely_any_in_normal_data():
    rng = random.Random(0)
    hits = 0
    trials = 1000
    for _ in range(trials):
        x = [rng.gauss(0.0, 1.0) for _ in range(10)]
        hits += bool(esd_outliers(x, 0.05, 4)[0])
    # about alpha: well under 3 alpha over 1000 trials (measured 0.097 for any outlier, either side)
    assert hits / trials < 0.15
    x = [rng.gauss(0.0, 1.0) for _ in range(10)]
    x[2], x[7], x[9] = 12.0, 9.0, 15.0
    out, mean, critical = esd_outliers(x, 0.05, 4)
    assert sorted(out) == [2, 7, 9]
    kept = [v for i, v in enumerate(x) if i not in (2, 7, 9)]
    assert mean == pytest.approx(sum(kept) / 7)
    assert 0 < critical < max(kept) - mean + 5  # the rest lie within a few sd of their mean
    # a far-off value on the other side does not mask them
    x[0] = -40.0
    assert sorted(esd_outliers(x, 0.05, 4)[0]) == [0, 2, 7, 9]
    # too few values to test: nothing
    assert esd_outliers([0.0, 100.0], 0.05, 1)[0] == []
