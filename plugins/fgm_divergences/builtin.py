"""Closed-form f-divergences: the rows of the tables in docs/math.md section 2.2.

Each class gives f(u), the density-critic pair T(s) = f'(e^s), C(s) = f*(f'(e^s)) as
functions of the log ratio s (computed in log space: softplus, expm1, log1p, never e^s then a
log), the free-critic activation g_f(v) and conjugate f*(t), and (f')^{-1} in log space.

Numerics (float32 and float64):

- every exponential goes through :meth:`Divergence.exp` / :meth:`ClosedForm.expm1`, which clamp
  the argument at ``max_exp`` and count the clamped entries; s is never clamped where it
  enters linearly (kl: T(s) = 1 + s), so large ratios keep their gradient;
- for s in [-60, 60], T, C and their gradients are finite; for v in [-60, 60], activation(v),
  conjugate(activation(v)) and :meth:`ClosedForm.conj_act` (the composition computed in one
  stable formula) are finite;
- at the boundary of dom f*, where f* tends to +inf (hellinger t -> 1, js t -> log 2, gan
  t -> 0, alpha with 0 < a < 1), float32 rounding of g_f(v) reaches the boundary itself for
  moderate v (js: v > ~17). There ``conjugate`` saturates (a log floored at the dtype's
  smallest normal number, or an exponential clamped at ``max_exp``) and counts the entry as
  clamped; ``conj_act(v)`` stays exact there. Outside dom f* ``conjugate`` returns +inf.
- ``inverse_f_prime_log`` is exact inside the range of f' and, like the base-class bisection,
  confined to [-60, 60] (``LOG_RATIO_BOUND``): values of t outside the range of f' give the
  bound on that side instead of +-inf, so averages over latent draws stay finite.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fgm_core.components import Divergence
from fgm_core.errors import FGMError

LOG2 = math.log(2.0)
INF = math.inf
LOG_RATIO_BOUND = 60.0


# --------------------------------------------------------------------------- helpers
def log_lambert_w_exp(y: Tensor, iters: int = 30) -> Tensor:
    """log W(e^y) in float64, W the principal Lambert W function.

    Solves l = log w with w + log w = y, i.e. e^l + l = y, by Newton's method in l (convex,
    increasing, no overflow: w stays about y for large y), from w0 = y - log y (y > 1) or
    w0 = e^y (y <= 1). Works for y from about -700 (where l = y) up to 1e300. The gradient is
    exact (dl/dy = 1/(1 + w)), attached by one extra Newton step on the converged value.
    """
    y64 = y.to(torch.float64)
    with torch.no_grad():
        yd = y64.detach()
        big = yd > 1
        yb = torch.where(big, yd, torch.full_like(yd, 2.0))
        l_big = torch.log(yb - torch.log(yb))
        lval = torch.where(big, l_big, yd)
        for _ in range(iters):
            e = torch.exp(lval)
            lval = lval - (e + lval - yd) / (e + 1)
    if y64.requires_grad:
        e = torch.exp(lval)
        lval = lval - (e + lval - y64) / (e + 1)
    return lval


def lambert_w_exp(y: Tensor) -> Tensor:
    """W(e^y), in the dtype of ``y`` (see :func:`log_lambert_w_exp`)."""
    return torch.exp(log_lambert_w_exp(y)).to(y.dtype)


def _log_expm1(y: Tensor) -> Tensor:
    """log(e^y - 1) for y >= 0 without overflow (-inf at y = 0)."""
    small = y < 1
    a = torch.log(torch.expm1(torch.where(small, y, torch.ones_like(y))))
    yb = torch.where(small, torch.ones_like(y), y)
    b = yb + torch.log1p(-torch.exp(-yb))
    return torch.where(small, a, b)


def _log_softplus(x: Tensor) -> Tensor:
    """log(softplus(x)) = log log(1 + e^x), stable for very negative x (where it is ~x)."""
    low = x < -20
    a = torch.log(F.softplus(torch.where(low, torch.zeros_like(x), x)))
    xl = torch.where(low, x, torch.full_like(x, -20.0))
    b = xl + torch.log1p(-torch.exp(xl) / 2)
    return torch.where(low, b, a)


def _inf_where(mask: Tensor, value: Tensor, fill: float = INF) -> Tensor:
    return torch.where(mask, torch.full_like(value, fill), value)


class ClosedForm(Divergence):
    """Shared numerics for the closed-form divergences."""

    #: (inf f', sup f') over u in (0, inf): the interval g_f maps onto (up to its ends).
    range_f_prime: tuple[float, float] = (-INF, INF)
    description: str = ""

    def __init__(self, max_exp: float = 40.0) -> None:
        super().__init__(max_exp)
        self.params: dict[str, Any] = {}

    # -- numerics ----------------------------------------------------------------------
    def _count(self, mask: Tensor) -> None:
        self.clamped = self.clamped + mask.sum()

    def expm1(self, x: Tensor) -> Tensor:
        """expm1 with the argument clamped at ``max_exp``; counted like :meth:`exp`."""
        self._count(x.detach() > self.max_exp)
        return torch.expm1(torch.clamp(x, max=self.max_exp))

    def neg_log(self, y: Tensor) -> Tensor:
        """-log(y) for y >= 0, y floored at the dtype's smallest normal number (counted)."""
        tiny = torch.finfo(y.dtype).tiny
        self._count(y.detach() < tiny)
        return -torch.log(torch.clamp(y, min=tiny))

    def neg_log1m(self, t: Tensor) -> Tensor:
        """-log(1 - t) for t <= 1: log1p where accurate, floored log near t = 1."""
        small = t < 0.5
        a = -torch.log1p(-torch.where(small, t, torch.zeros_like(t)))
        b = self.neg_log(1 - torch.where(small, torch.full_like(t, 0.75), t))
        return torch.where(small, a, b)

    def neg_log1mexp(self, x: Tensor) -> Tensor:
        """-log(1 - e^x) for x <= 0 (the standard log1mexp split at -log 2)."""
        near = x > -LOG2
        a = self.neg_log(-torch.expm1(torch.where(near, x, -torch.ones_like(x))))
        b = -torch.log1p(-self.exp(torch.where(near, -torch.ones_like(x), x)))
        return torch.where(near, a, b)

    @staticmethod
    def _clip_log_ratio(s: Tensor) -> Tensor:
        return torch.clamp(s, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)

    # -- free critics ------------------------------------------------------------------
    def conj_act(self, v: Tensor) -> Tensor:
        """f*(g_f(v)) in one stable formula (same value as ``conjugate(activation(v))``,
        clamps included, but exact where float rounding puts g_f(v) on the boundary)."""
        return self.conjugate(self.activation(v))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(self.params)
        return d


# --------------------------------------------------------------------------- the table
class KL(ClosedForm):
    """Kullback-Leibler, f(u) = u log u (the VAE case with the density critic)."""

    name = "kl"
    f_prime_at_1 = 1.0
    model_term_constant = True  # E_P[e^s] = integral of exp(l): the VAE update drops it
    description = "Kullback-Leibler KL(Q||P), f(u) = u log u; with the density critic this is the VAE"

    def f(self, u: Tensor) -> Tensor:
        return torch.special.xlogy(u, u)

    def T(self, s: Tensor) -> Tensor:
        return 1 + s  # linear in s: never clamped

    def C(self, s: Tensor) -> Tensor:
        return self.exp(s)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return torch.zeros_like(s)  # T = 1 + s

    def activation(self, v: Tensor) -> Tensor:
        return v

    def conjugate(self, t: Tensor) -> Tensor:
        return self.exp(t - 1)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        return self._clip_log_ratio(t - 1)


class ReverseKL(ClosedForm):
    """Reverse Kullback-Leibler, f(u) = -log u."""

    name = "reverse_kl"
    f_prime_at_1 = -1.0
    range_f_prime = (-INF, 0.0)
    description = "reverse Kullback-Leibler KL(P||Q), f(u) = -log u"

    def f(self, u: Tensor) -> Tensor:
        return -torch.log(u)

    def T(self, s: Tensor) -> Tensor:
        return -self.exp(-s)

    def C(self, s: Tensor) -> Tensor:
        return s - 1

    def log_T_prime(self, s: Tensor) -> Tensor:
        return -s  # T = -e^-s

    def activation(self, v: Tensor) -> Tensor:
        return -self.exp(-v)

    def conjugate(self, t: Tensor) -> Tensor:
        out = t > 0
        ts = torch.where(out, -torch.ones_like(t), t)
        return _inf_where(out, self.neg_log(-ts) - 1)

    def conj_act(self, v: Tensor) -> Tensor:
        return torch.clamp(v, min=-self.max_exp) - 1

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        ok = t < 0
        ts = torch.where(ok, t, -torch.ones_like(t))
        return self._clip_log_ratio(_inf_where(~ok, -torch.log(-ts)))


class Pearson(ClosedForm):
    """Pearson chi^2, f(u) = (u - 1)^2. The conjugate t^2/4 + t is used for every t (exact
    for t >= -2, a looser but valid bound below), so the activation is the identity."""

    name = "pearson"
    range_f_prime = (-2.0, INF)
    description = "Pearson chi-squared, f(u) = (u-1)^2"

    def f(self, u: Tensor) -> Tensor:
        return (u - 1) ** 2

    def T(self, s: Tensor) -> Tensor:
        return 2 * self.expm1(s)

    def C(self, s: Tensor) -> Tensor:
        return self.expm1(2 * s)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return LOG2 + s  # T = 2(e^s - 1)

    def activation(self, v: Tensor) -> Tensor:
        return v

    def conjugate(self, t: Tensor) -> Tensor:
        return t * (t / 4 + 1)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        ok = t > -2
        ts = torch.where(ok, t, torch.zeros_like(t))
        return self._clip_log_ratio(_inf_where(~ok, torch.log1p(ts / 2), -INF))


class Neyman(ClosedForm):
    """Neyman chi^2, f(u) = (1 - u)^2 / u."""

    name = "neyman"
    range_f_prime = (-INF, 1.0)
    description = "Neyman chi-squared, f(u) = (1-u)^2/u"

    def f(self, u: Tensor) -> Tensor:
        return (1 - u) ** 2 / u

    def T(self, s: Tensor) -> Tensor:
        return -self.expm1(-2 * s)

    def C(self, s: Tensor) -> Tensor:
        return -2 * self.expm1(-s)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return LOG2 - 2 * s  # T = 1 - e^-2s

    def activation(self, v: Tensor) -> Tensor:
        return -self.expm1(v)

    def conjugate(self, t: Tensor) -> Tensor:
        out = t > 1
        ts = torch.where(out, torch.zeros_like(t), t)
        # f*(1) = 2 is finite; the floor only keeps the gradient 1/sqrt(1 - t) finite there
        root = torch.sqrt(torch.clamp(1 - ts, min=torch.finfo(t.dtype).tiny))
        return _inf_where(out, 2 - 2 * root)

    def conj_act(self, v: Tensor) -> Tensor:
        return -2 * self.expm1(torch.clamp(v, max=self.max_exp) / 2)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        ok = t < 1
        ts = torch.where(ok, t, torch.zeros_like(t))
        return self._clip_log_ratio(_inf_where(~ok, -torch.log1p(-ts) / 2))


class Hellinger(ClosedForm):
    """Squared Hellinger, f(u) = (sqrt u - 1)^2."""

    name = "hellinger"
    range_f_prime = (-INF, 1.0)
    description = "squared Hellinger, f(u) = (sqrt(u)-1)^2"

    def f(self, u: Tensor) -> Tensor:
        return (torch.sqrt(u) - 1) ** 2

    def T(self, s: Tensor) -> Tensor:
        return -self.expm1(-s / 2)

    def C(self, s: Tensor) -> Tensor:
        return self.expm1(s / 2)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return -s / 2 - LOG2  # T = 1 - e^(-s/2)

    def activation(self, v: Tensor) -> Tensor:
        return -self.expm1(-v)

    def conjugate(self, t: Tensor) -> Tensor:
        # t / (1 - t) = 1/(1 - t) - 1 = expm1(-log(1 - t)); +inf at t = 1 saturates at e^max_exp
        out = t > 1
        ts = torch.where(out, torch.zeros_like(t), t)
        return _inf_where(out, self.expm1(self.neg_log1m(ts)))

    def conj_act(self, v: Tensor) -> Tensor:
        return self.expm1(torch.clamp(v, min=-self.max_exp))

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        ok = t < 1
        ts = torch.where(ok, t, torch.zeros_like(t))
        return self._clip_log_ratio(_inf_where(~ok, -2 * torch.log1p(-ts)))


class JS(ClosedForm):
    """Jensen-Shannon as in f-GAN (equals 2 JS), f(u) = u log u - (u+1) log((u+1)/2)."""

    name = "js"
    range_f_prime = (-INF, LOG2)
    description = "Jensen-Shannon (f-GAN's, equals 2 JS), f(u) = u log u - (u+1) log((u+1)/2)"

    def f(self, u: Tensor) -> Tensor:
        return torch.special.xlogy(u, u) - torch.special.xlogy(u + 1, u + 1) + (u + 1) * LOG2

    def T(self, s: Tensor) -> Tensor:
        return LOG2 - F.softplus(-s)

    def C(self, s: Tensor) -> Tensor:
        return F.softplus(s) - LOG2

    def log_T_prime(self, s: Tensor) -> Tensor:
        return -F.softplus(s)  # T = log 2 - softplus(-s)

    def activation(self, v: Tensor) -> Tensor:
        return LOG2 - F.softplus(-v)

    def conjugate(self, t: Tensor) -> Tensor:
        # -log(2 - e^t) = -log 2 - log(1 - e^(t - log 2))
        x = t - LOG2
        out = x > 0
        xs = torch.where(out, -torch.ones_like(x), x)
        return _inf_where(out, self.neg_log1mexp(xs) - LOG2)

    def conj_act(self, v: Tensor) -> Tensor:
        return F.softplus(v) - LOG2

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        # log2 - softplus(-s) = t  <=>  s = -log(expm1(log 2 - t))
        y = LOG2 - t
        ok = y > 0
        ys = torch.where(ok, y, torch.ones_like(y))
        return self._clip_log_ratio(_inf_where(~ok, -_log_expm1(ys)))


class GAN(ClosedForm):
    """The classic GAN, f(u) = u log u - (u+1) log(u+1) = 2 JS - log 4; f(1) = -log 4."""

    name = "gan"
    f_offset = -math.log(4.0)
    f_prime_at_1 = -LOG2
    range_f_prime = (-INF, 0.0)
    description = "classic GAN, f(u) = u log u - (u+1) log(u+1) (2 JS - log 4); joint critic: ALI/BiGAN"

    def f(self, u: Tensor) -> Tensor:
        return torch.special.xlogy(u, u) - torch.special.xlogy(u + 1, u + 1)

    def T(self, s: Tensor) -> Tensor:
        return -F.softplus(-s)

    def C(self, s: Tensor) -> Tensor:
        return F.softplus(s)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return -F.softplus(s)  # T = -softplus(-s)

    def activation(self, v: Tensor) -> Tensor:
        return -F.softplus(-v)

    def conjugate(self, t: Tensor) -> Tensor:
        out = t > 0
        ts = torch.where(out, -torch.ones_like(t), t)
        return _inf_where(out, self.neg_log1mexp(ts))

    def conj_act(self, v: Tensor) -> Tensor:
        return F.softplus(v)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        # -softplus(-s) = t  <=>  s = -log(expm1(-t))
        ok = t < 0
        ys = torch.where(ok, -t, torch.ones_like(t))
        return self._clip_log_ratio(_inf_where(~ok, -_log_expm1(ys)))


class TotalVariation(ClosedForm):
    """Total variation, f(u) = |u - 1| / 2. Not strictly convex and T(s) = sign(s)/2 has no
    gradient, so it serves free critics only."""

    name = "total_variation"
    supports_density = False
    strictly_convex = False
    range_f_prime = (-0.5, 0.5)
    description = "total variation, f(u) = |u-1|/2 (free critics only)"

    def f(self, u: Tensor) -> Tensor:
        return torch.abs(u - 1) / 2

    def T(self, s: Tensor) -> Tensor:
        return torch.sign(s) / 2

    def C(self, s: Tensor) -> Tensor:
        return torch.sign(s) / 2

    def activation(self, v: Tensor) -> Tensor:
        return torch.tanh(v) / 2

    def conjugate(self, t: Tensor) -> Tensor:
        return _inf_where(t.abs() > 0.5, t)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        raise FGMError(
            "total_variation is not strictly convex: f' cannot be inverted to a density ratio",
            "use a strictly convex divergence (e.g. js, gan, kl) to read densities from a free critic",
        )


class Jeffrey(ClosedForm):
    """Jeffrey (symmetric KL), f(u) = (u - 1) log u. Its conjugate needs the Lambert W
    function: f*(t) = w + 1/w + t - 2 with w = W(e^(1-t)), computed as (w-1)^2/w + t."""

    name = "jeffrey"
    description = "Jeffrey (KL(Q||P) + KL(P||Q)), f(u) = (u-1) log u"

    def f(self, u: Tensor) -> Tensor:
        return (u - 1) * torch.log(u)

    def T(self, s: Tensor) -> Tensor:
        return s - self.expm1(-s)

    def C(self, s: Tensor) -> Tensor:
        return s + self.expm1(s)

    def log_T_prime(self, s: Tensor) -> Tensor:
        return F.softplus(-s)  # T = s + 1 - e^-s

    def activation(self, v: Tensor) -> Tensor:
        return v

    def conjugate(self, t: Tensor) -> Tensor:
        lw = log_lambert_w_exp(1 - t)  # float64, log w
        t64 = t.to(torch.float64)
        out = self.expm1(lw) ** 2 * self.exp(-lw) + t64
        return out.to(t.dtype)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        return self._clip_log_ratio(-log_lambert_w_exp(1 - t)).to(t.dtype)


class Alpha(ClosedForm):
    """Alpha-divergence family, f(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)), a not 0 or 1.

    a = 2 is half Pearson, a = 0.5 twice squared Hellinger, a -> 1 KL, a -> 0 reverse KL.
    a < 1: f' is bounded above by 1/(1-a), activation 1/(1-a) - softplus(-v).
    a > 1: f' is bounded below by -1/(a-1); the activation is the identity and f* = -1/a
    below that bound (the exact conjugate there).
    """

    name = "alpha"
    description = "alpha-divergence, f(u) = (u^a - 1 - a(u-1))/(a(a-1)); param alpha (default 0.5, not 0 or 1)"

    def __init__(self, max_exp: float = 40.0, alpha: float = 0.5) -> None:
        super().__init__(max_exp)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise FGMError(
                f"divergence 'alpha': alpha must be a finite number, got {alpha!r}",
                "e.g. [divergence.params] alpha = 0.5",
            )
        a = float(alpha)
        if a == 0.0 or a == 1.0:
            other = "reverse_kl" if a == 0.0 else "kl"
            raise FGMError(
                f"divergence 'alpha': alpha = {alpha:g} is the limit case {other}, where the formula divides by zero",
                f"use divergence name = {other!r}, or alpha != 0, 1",
            )
        self.a = a
        self.p = a / (a - 1)  # exponent in the conjugate
        self.params = {"alpha": a}
        if a < 1:
            self.bound = 1 / (1 - a)
            self.range_f_prime = (-INF, self.bound)
        else:
            self.bound = -1 / (a - 1)
            self.range_f_prime = (self.bound, INF)

    def f(self, u: Tensor) -> Tensor:
        a = self.a
        return (u**a - 1 - a * (u - 1)) / (a * (a - 1))

    def T(self, s: Tensor) -> Tensor:
        return self.expm1((self.a - 1) * s) / (self.a - 1)

    def C(self, s: Tensor) -> Tensor:
        return self.expm1(self.a * s) / self.a

    def log_T_prime(self, s: Tensor) -> Tensor:
        return (self.a - 1) * s  # T = (e^((a-1)s) - 1)/(a-1)

    def activation(self, v: Tensor) -> Tensor:
        if self.a < 1:
            return self.bound - F.softplus(-v)
        return v

    def conjugate(self, t: Tensor) -> Tensor:
        a, p = self.a, self.p
        tiny = torch.finfo(t.dtype).tiny
        if a < 1:
            gap = self.bound - t  # t(a-1) + 1 = (1-a) gap; exact 0 at the rounded bound
            out = gap < 0
            gs = torch.where(out, torch.ones_like(gap), gap)
            log_base = math.log(1 - a) + torch.log(torch.clamp(gs, min=tiny))
            return _inf_where(out, self.expm1(p * log_base) / a)
        base = (a - 1) * t + 1
        inside = base > 0
        bs = torch.where(inside, base, torch.ones_like(base))
        val = self.expm1(p * torch.log(bs)) / a
        return torch.where(inside, val, torch.full_like(val, -1 / a))

    def conj_act(self, v: Tensor) -> Tensor:
        if self.a >= 1:
            return self.conjugate(v)
        log_base = math.log(1 - self.a) + _log_softplus(-v)
        return self.expm1(self.p * log_base) / self.a

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        z = (self.a - 1) * t
        ok = z > -1
        zs = torch.where(ok, z, torch.zeros_like(z))
        s = torch.log1p(zs) / (self.a - 1)
        return self._clip_log_ratio(_inf_where(~ok, s, -INF if self.a > 1 else INF))


BUILTIN_CLASSES: dict[str, type[ClosedForm]] = {
    cls.name: cls for cls in (KL, ReverseKL, Pearson, Neyman, Hellinger, JS, GAN, TotalVariation, Jeffrey, Alpha)
}

__all__ = [
    "BUILTIN_CLASSES",
    "GAN",
    "JS",
    "KL",
    "LOG_RATIO_BOUND",
    "Alpha",
    "ClosedForm",
    "Hellinger",
    "Jeffrey",
    "Neyman",
    "Pearson",
    "ReverseKL",
    "TotalVariation",
    "lambert_w_exp",
    "log_lambert_w_exp",
]
