"""``triangular``: the triangular discrimination (Le Cam divergence), f(u) = (u - 1)^2 / (u + 1).

Closed forms (u = Q/P > 0, s = log u, t in dom f*):

- f'(u) = 1 - 4 / (u + 1)^2, increasing from f'(0) = -3 to f'(inf) = 1; f'(1) = 0;
  f''(u) = 8 / (u + 1)^3 > 0, so f is strictly convex.
- With 1 / (u + 1) = sigmoid(-s) and u / (u + 1) = sigmoid(s):
    T(s) = f'(e^s)                = 1 - 4 sigmoid(-s)^2         in (-3, 1)
    C(s) = e^s f'(e^s) - f(e^s)   = 4 sigmoid(s)^2 - 1          in (-1, 3)
  Both are bounded, so a density critic never sees e^s overflow.
- Conjugate: f'(u) = t gives u = 2 / sqrt(1 - t) - 1. Writing r = sqrt(1 - t) in (0, 2),
  u t - f(u) = (1 - r)(3 - r), i.e.
    f*(t) = 4 - t - 4 sqrt(1 - t) = (2 - sqrt(1 - t))^2 - 1     for -3 <= t <= 1,
  f*(t) = -f(0) = -1 for t < -3 (the supremum is at u = 0) and +inf for t > 1.
- g_f(v) = -3 + 4 sigmoid(v) maps R onto (-3, 1), the range of f'.
- log (f')^{-1}(t) = log(2 - sqrt(1 - t)) - log(1 - t) / 2.

Numerics: the only exponential is inside sigmoid, computed as 1 / (1 + self.exp(-x)) so it
goes through the clamped :meth:`Divergence.exp` like every exponential of a divergence must
(the clamp only touches values already below float32 resolution, and counts them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fgm_core.components import Divergence
from fgm_core.errors import FGMError

#: log ratios are confined to [-60, 60] when read back from a free critic (like the
#: built-in divergences and the base-class bisection).
LOG_RATIO_BOUND = 60.0


class Triangular(Divergence):
    """Triangular discrimination (Le Cam), f(u) = (u - 1)^2 / (u + 1); bounded by 2."""

    name = "triangular"
    f_offset = 0.0  # f(1)
    f_prime_at_1 = 0.0  # f'(1): the critic value where data and model agree
    supports_density = True
    strictly_convex = True

    def _sigmoid(self, x: Tensor) -> Tensor:
        """sigmoid(x) = 1 / (1 + e^{-x}), with the exponential clamped by :meth:`exp`."""
        return 1.0 / (1.0 + self.exp(-x))

    # -- the generator ----------------------------------------------------------------
    def f(self, u: Tensor) -> Tensor:
        return (u - 1) ** 2 / (u + 1)

    # -- density critic: functions of s = log(Q/P) ------------------------------------
    def T(self, s: Tensor) -> Tensor:
        return 1 - 4 * self._sigmoid(-s) ** 2

    def C(self, s: Tensor) -> Tensor:
        return 4 * self._sigmoid(s) ** 2 - 1

    # -- free critics -----------------------------------------------------------------
    def activation(self, v: Tensor) -> Tensor:
        return -3 + 4 * self._sigmoid(v)

    def conjugate(self, t: Tensor) -> Tensor:
        # inside [-3, 1]: (2 - sqrt(1 - t))^2 - 1; the floor on 1 - t keeps the gradient
        # finite where float32 rounds g_f(v) onto the boundary t = 1 (f*(1) = 3 is finite).
        inside = (t >= -3) & (t <= 1)
        ts = torch.where(inside, t, torch.zeros_like(t))
        r = torch.sqrt(torch.clamp(1 - ts, min=torch.finfo(t.dtype).tiny))
        val = (2 - r) ** 2 - 1
        val = torch.where(t < -3, torch.full_like(t, -1.0), val)
        return torch.where(t > 1, torch.full_like(t, float("inf")), val)

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        """log (f')^{-1}(t) in closed form, confined to [-60, 60] outside the range of f'."""
        ok = (t > -3) & (t < 1)
        ts = torch.where(ok, t, torch.zeros_like(t))
        one_minus = 1 - ts
        s = torch.log(2 - torch.sqrt(one_minus)) - 0.5 * torch.log(one_minus)
        s = torch.where(t >= 1, torch.full_like(s, LOG_RATIO_BOUND), s)
        s = torch.where(t <= -3, torch.full_like(s, -LOG_RATIO_BOUND), s)
        return torch.clamp(s, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "formula": "(u-1)^2/(u+1)"}


def make_triangular(max_exp: float = 40.0, **params: Any) -> Triangular:
    """Factory registered for ``triangular``: ``factory(max_exp=..., **divergence.params)``.

    The divergence has no parameters, so any entry in ``[divergence.params]`` is an error
    that names it (a plugin should never ignore configuration silently).
    """
    if params:
        raise FGMError(f"divergence 'triangular' has no parameter {sorted(params)[0]!r}",
                       "accepted parameters: none; remove [divergence.params]")
    if isinstance(max_exp, bool) or not isinstance(max_exp, (int, float)) or not 0 < max_exp < float("inf"):
        raise FGMError(f"divergence.max_exp must be a positive finite number, got {max_exp!r}",
                       "the default 40 is fine")
    return Triangular(max_exp=float(max_exp))
