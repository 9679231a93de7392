"""A divergence defined by f alone (docs/math.md section 6).

:func:`from_f` validates a user's f on a wide log grid and derives everything else
numerically, in float64 internally:

- f' by torch autograd (f must act elementwise);
- T(s) = f'(e^s) and C(s) = e^s f'(e^s) - f(e^s), differentiable in s. Here s is the
  argument of an exponential, so it is clamped to [-max_exp, max_exp] (counted): unlike the
  closed forms, kl defined as ``"u*log(u)"`` saturates at s = max_exp;
- f*(t) = u t - f(u) at the u solving f'(u) = t, by bisection in log u over the validated grid
  [1e-12, 1e12] (its gradient, u, is exact by the envelope theorem). Beyond a finite upper end
  b of the range of f', f* = +inf; beyond the grid on a side where the range of f' goes on
  (or in the sliver between f'(1e-12) and a finite lower end a), the grid's end point is used,
  which gives a lower bound on f* that tends to the exact value (-f(0+) below a finite a);
- the activation from the ends (a, b) of the range of f' on (0, inf), estimated from f' at
  1e-8, 1e-10, 1e-12 and 1e8, 1e10, 1e12 (an end is finite when f' settles or its steps
  shrink geometrically, and is then extrapolated): both infinite v; finite b only
  b - softplus(-v); finite a only a + softplus(v); both a + (b - a) sigmoid(v).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fgm_core.components import Divergence
from fgm_core.errors import FGMError

GRID_LO, GRID_HI = -12.0, 12.0  # log10 u of the validation grid
GRID_POINTS = 24 * 20 + 1
LOG_U_BOUND = GRID_HI * math.log(10.0)  # bisection bracket in log u: [-27.6, 27.6]
BISECTION_STEPS = 64  # 55 in log u / 2^64: below float64 resolution
OFFSET_TOL = 1e-6
CONVEX_TOL = 1e-9  # relative: f' may dip this much between grid points (rounding)
TAIL_RATIO = 0.8  # f' steps shrinking faster than this per two decades: finite end
STRICT_RANGE = (-3.0, 3.0)  # log10 u where strict convexity (no flat stretch of f') is checked


def _tail(inner: float, mid: float, outer: float) -> float | None:
    """The limit of f' at one end from three values moving outward, or None if unbounded."""
    d_in, d_out = abs(mid - inner), abs(outer - mid)
    settled = d_out <= 1e-10 * (1 + abs(outer))
    if d_out == 0 or (d_in == 0 and settled):
        return outer
    if d_in == 0:
        return None
    r = d_out / d_in
    if r >= TAIL_RATIO:
        return outer if settled else None
    return outer + math.copysign(d_out, outer - mid) * r / (1 - r)  # geometric tail


class DerivedDivergence(Divergence):
    """A :class:`Divergence` computed from a validated generator f (see :func:`from_f`)."""

    supports_density = True
    strictly_convex = True

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        *,
        name: str,
        offset: float,
        max_exp: float,
        range_f_prime: tuple[float, float],
        f_prime_at_1: float,
        strictly_convex: bool,
        formula: str | None = None,
    ) -> None:
        super().__init__(max_exp)
        self._fn = f
        self.name = name
        self.f_offset = float(offset)
        self.f_prime_at_1 = float(f_prime_at_1)
        self.range_f_prime = range_f_prime
        self.strictly_convex = strictly_convex
        # a flat stretch of f' means T(s) has no gradient there: free critics only
        self.supports_density = strictly_convex
        self.formula = formula

    # -- f and f' (float64) ------------------------------------------------------------
    def f(self, u: Tensor) -> Tensor:
        return _call(self._fn, u)

    def _f_and_prime(self, u: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
        """f(u) and f'(u) by autograd; differentiable in u when ``create_graph``."""
        with torch.enable_grad():
            x = u if (create_graph and u.requires_grad) else u.detach().requires_grad_(True)
            y = _call(self._fn, x)
            if not y.requires_grad:
                return y, torch.zeros_like(u)
            (g,) = torch.autograd.grad(y.sum(), x, create_graph=create_graph, allow_unused=True)
        if g is None:
            g = torch.zeros_like(u)
        if not create_graph:
            y, g = y.detach(), g.detach()
        return y, g

    def f_prime(self, u: Tensor) -> Tensor:
        """f'(u) by autograd (float64 inside, returned in the dtype of ``u``)."""
        return self._f_and_prime(u.to(torch.float64), create_graph=u.requires_grad)[1].to(u.dtype)

    def _exp_s(self, s: Tensor) -> Tensor:
        """e^s in float64 with s clamped to [-max_exp, max_exp] (both sides counted)."""
        s64 = s.to(torch.float64)
        self.clamped = self.clamped + (s64.detach().abs() > self.max_exp).sum()
        return torch.exp(torch.clamp(s64, -self.max_exp, self.max_exp))

    # -- density critic ----------------------------------------------------------------
    def T(self, s: Tensor) -> Tensor:
        u = self._exp_s(s)
        return self._f_and_prime(u, create_graph=u.requires_grad)[1].to(s.dtype)

    def C(self, s: Tensor) -> Tensor:
        u = self._exp_s(s)
        y, g = self._f_and_prime(u, create_graph=u.requires_grad)
        return (u * g - y).to(s.dtype)

    # -- free critics ------------------------------------------------------------------
    def activation(self, v: Tensor) -> Tensor:
        a, b = self.range_f_prime
        if math.isinf(a) and math.isinf(b):
            return v
        if math.isinf(a):
            return b - F.softplus(-v)
        if math.isinf(b):
            return a + F.softplus(v)
        return a + (b - a) * torch.sigmoid(v)

    def _solve_log_u(self, t: Tensor) -> Tensor:
        """log u in [-LOG_U_BOUND, LOG_U_BOUND] with f'(u) = t, by bisection (float64)."""
        lo = torch.full_like(t, -LOG_U_BOUND)
        hi = torch.full_like(t, LOG_U_BOUND)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            above = self._f_and_prime(torch.exp(mid), create_graph=False)[1] > t
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2

    def conjugate(self, t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        with torch.no_grad():
            u = torch.exp(self._solve_log_u(t64.detach()))
            fu = _call(self._fn, u)
        out = u * t64 - fu  # d/dt = u (envelope theorem)
        b = self.range_f_prime[1]
        if math.isfinite(b):
            out = torch.where(t64 > b + 1e-6 * (1 + abs(b)), torch.full_like(out, math.inf), out)
        return out.to(t.dtype)

    def conj_act(self, v: Tensor) -> Tensor:
        """f*(g_f(v)); here simply the composition (finite: the solver stays on the grid)."""
        return self.conjugate(self.activation(v))

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        """log (f')^{-1}(t) by bisection, confined to the grid [-27.6, 27.6]."""
        if not self.strictly_convex:
            raise FGMError(
                f"divergence {self.name!r} is not strictly convex: f' cannot be inverted",
                "use a strictly convex f to read densities from a free critic",
            )
        with torch.no_grad():
            return self._solve_log_u(t.to(torch.float64)).to(t.dtype)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.formula is not None:
            d["formula"] = self.formula
        d["range_f_prime"] = list(self.range_f_prime)
        return d


def _call(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    out = fn(u)
    if not isinstance(out, Tensor):
        out = torch.as_tensor(out, dtype=u.dtype, device=u.device)
    if out.shape != u.shape:
        out = torch.broadcast_to(out, u.shape)
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def from_f(
    f: Callable[[Tensor], Tensor],
    *,
    name: str = "custom",
    offset: float = 0.0,
    max_exp: float = 40.0,
    formula: str | None = None,
) -> DerivedDivergence:
    """Build a :class:`Divergence` from a convex generator ``f`` (elementwise on tensors).

    Checks, on u in [1e-12, 1e12] (log grid, float64), in this order, each failure an
    :class:`FGMError` saying which check failed: f is finite; f(1) == ``offset`` (within
    1e-6); f' is nondecreasing (f convex) and not constant. ``strictly_convex`` (and
    ``supports_density``) is False when f' has a flat stretch on [1e-3, 1e3].
    """
    label = f"f(u) = {formula}" if formula else f"divergence {name!r}"
    if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not math.isfinite(offset):
        raise FGMError(f"{label}: offset must be a finite number, got {offset!r}", "e.g. offset = -1.3863")
    u = torch.logspace(GRID_LO, GRID_HI, GRID_POINTS, dtype=torch.float64)
    ends = torch.tensor([1e-8, 1e-10, 1e-12, 1e8, 1e10, 1e12, 1.0], dtype=torch.float64)
    probe = DerivedDivergence(
        f,
        name=name,
        offset=offset,
        max_exp=max_exp,
        range_f_prime=(-math.inf, math.inf),
        f_prime_at_1=0.0,
        strictly_convex=True,
        formula=formula,
    )
    try:
        fu, g = probe._f_and_prime(u, create_graph=False)
        fe, ge = probe._f_and_prime(ends, create_graph=False)
    except FGMError:
        raise
    except Exception as e:  # noqa: BLE001 - a user function may fail in any way
        raise FGMError(
            f"{label}: evaluating f failed: {type(e).__name__}: {e}",
            "f must map a float64 tensor of u > 0 to a tensor of the same shape",
        ) from None

    for values, what in ((fu, "f(u)"), (g, "f'(u)")):
        bad = ~torch.isfinite(values)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise FGMError(
                f"{label}: {what} is {values[i].item()} at u = {_fmt(u[i].item())}",
                "f must be finite with a finite derivative for all u in [1e-12, 1e12]",
            )
    if not torch.isfinite(fe).all() or not torch.isfinite(ge).all():
        raise FGMError(
            f"{label}: f or f' is not finite at u = 1 or near the ends of [1e-12, 1e12]",
            "f must be finite with a finite derivative for all u > 0",
        )

    f1 = fe[-1].item()
    if abs(f1 - offset) > OFFSET_TOL * (1 + abs(offset)):
        must = "0" if offset == 0 else f"the offset {offset:.6g}"
        raise FGMError(
            f"{label}: f(1) = {f1:.6g} but must be {must} (a divergence must vanish when the two distributions agree)",
            f"subtract {f1:.6g} from f, or if the constant is intended (as -log 4 for gan) pass offset = {f1:.6g}",
        )

    dg = g[1:] - g[:-1]
    tol = CONVEX_TOL * (1 + g[1:].abs() + g[:-1].abs())
    dec = dg < -tol
    if dec.any():
        i = int(dec.nonzero()[0])
        raise FGMError(
            f"{label}: f is not convex on (0, inf): f' decreases between u = {_fmt(u[i].item())} "
            f"and u = {_fmt(u[i + 1].item())} (from {g[i].item():.6g} to {g[i + 1].item():.6g})",
            "an f-divergence needs a convex f; check signs, e.g. u*log(u) not -u*log(u)",
        )
    if (g.max() - g.min()).item() <= CONVEX_TOL * (1 + g.abs().max().item()):
        raise FGMError(
            f"{label}: f is linear (f' is constant), so the divergence is 0 for every pair",
            "give a strictly convex f, e.g. u*log(u)",
        )

    lg = torch.log10(u)
    mid = (lg[1:] > STRICT_RANGE[0]) & (lg[:-1] < STRICT_RANGE[1])
    strict = not bool(((dg <= tol) & mid).any())

    ge_l = [float(x) for x in ge.tolist()]
    lower = _tail(ge_l[0], ge_l[1], ge_l[2])
    upper = _tail(ge_l[3], ge_l[4], ge_l[5])
    rng = (-math.inf if lower is None else lower, math.inf if upper is None else upper)
    f_prime_at_1 = ge_l[6]
    return DerivedDivergence(
        f,
        name=name,
        offset=offset,
        max_exp=max_exp,
        range_f_prime=rng,
        f_prime_at_1=f_prime_at_1,
        strictly_convex=strict,
        formula=formula,
    )


__all__ = ["DerivedDivergence", "from_f"]
