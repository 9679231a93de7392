"""Small statistical tests the collapse detector needs (no SciPy dependency)."""

from __future__ import annotations

import math


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = (
        a * math.log(x) + b * math.log1p(-x) - math.log(a) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return math.exp(log_front) * h


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on the CDF; p in (0, 1))."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def esd_outliers(values: list[float], alpha: float, max_outliers: int) -> tuple[list[int], float, float]:
    """The values that do not belong with the rest: the generalized ESD test (Rosner, 1983).

    Step i = 1 .. ``max_outliers`` removes the remaining value farthest from the mean and computes
    R_i = |its value - mean| / sd of the values before removal, against the critical value
    lambda_i = (n - i) t / sqrt((n - i - 1 + t^2)(n - i + 1)), t the Student t quantile at
    1 - alpha / (2 (n - i + 1)) with n - i - 1 degrees of freedom. The outliers are the values
    removed in the first r steps, r the last step with R_r > lambda_r. The test assumes the rest
    are roughly normal; at level ``alpha`` it names no outlier in a normal sample with probability
    about 1 - alpha. Removing the farthest value on either side keeps one far-off value from
    hiding (masking) the others.

    Returns (indices of the outliers, in the order removed; the mean of the rest; lambda * sd at
    the first step that found none: how far from that mean a value must lie to be the next
    outlier, NaN when no step is left).
    """
    n = len(values)
    rest = list(range(n))
    steps: list[tuple[int, float, float, float, float]] = []
    for i in range(1, max_outliers + 2):
        if n - i - 1 < 1:
            break
        vals = [values[j] for j in rest]
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        far = max(rest, key=lambda j: abs(values[j] - mean))
        dev = abs(values[far] - mean)
        r_i = dev / sd if sd > 0 else (math.inf if dev > 0 else 0.0)
        t = student_t_quantile(1.0 - alpha / (2 * (n - i + 1)), n - i - 1)
        lam = (n - i) * t / math.sqrt((n - i - 1 + t * t) * (n - i + 1))
        steps.append((far, r_i, lam, mean, lam * sd))
        rest.remove(far)
    found = 0
    for i, (_, r_i, lam, _, _) in enumerate(steps[:max_outliers], start=1):
        if r_i > lam:
            found = i
    outliers = [st[0] for st in steps[:found]]
    if found < len(steps):
        _, _, _, mean, critical = steps[found]
    else:
        kept = [values[j] for j in range(n) if j not in outliers]
        mean, critical = (sum(kept) / len(kept) if kept else math.nan), math.nan
    return outliers, mean, critical
