"""Built-in latent priors plugin (entry point ``priors``).

Registers ``mixture``: p(z) = (1/K) sum_k N(z; m_k, diag(s_k^2)), K equally weighted diagonal
Gaussians with learnable means and scales. A generator fed by one Gaussian is a continuous map
of a connected distribution, so it must put mass between disconnected data modes; a mixture
prior lets it place one latent cluster per mode (docs/math.md, "The latent prior").
``normal`` (N(0, I), the default) is the core's own and needs no plugin.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fgm_core.components import LOG_2PI, Prior
from fgm_core.errors import FGMError
from fgm_core.hookspecs import hookimpl

__version__ = "0.1.0"

#: accepted ``model.prior_options`` of ``mixture`` and their defaults
MIXTURE_OPTIONS: dict[str, Any] = {
    "components": 8,
    "radius": 2.0,
    "std": 0.3,
    "learn": True,
    "min_std": 1e-3,
    "seed": 0,
}
FIX = "edit model.prior_options"


def _number(options: dict[str, Any], key: str, *, integer: bool = False) -> Any:
    v = options[key]
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float))
    if not ok or not math.isfinite(v):
        kind = "an integer" if integer else "a finite number"
        raise FGMError(f"mixture prior: option {key!r} must be {kind}, got {v!r}", FIX)
    return int(v) if integer else float(v)


def mixture_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over the defaults, checked: one :class:`FGMError` naming the first bad option."""
    for key in options:
        if key not in MIXTURE_OPTIONS:
            raise FGMError(
                f"mixture prior has no option {key!r}",
                f"accepted options: {', '.join(MIXTURE_OPTIONS)}; {FIX}",
            )
    o = {**MIXTURE_OPTIONS, **options}
    k = _number(o, "components", integer=True)
    if not 1 <= k <= 4096:
        raise FGMError(f"mixture prior: option 'components' must be 1 to 4096, got {k}", FIX)
    radius = _number(o, "radius")
    if radius < 0:
        raise FGMError(f"mixture prior: option 'radius' must be >= 0, got {radius}", FIX)
    min_std = _number(o, "min_std")
    if min_std <= 0:
        raise FGMError(f"mixture prior: option 'min_std' must be > 0, got {min_std}", FIX)
    std = _number(o, "std")
    if std <= min_std:
        raise FGMError(f"mixture prior: option 'std' must be greater than min_std ({min_std}), got {std}", FIX)
    if not isinstance(o["learn"], bool):
        raise FGMError(f"mixture prior: option 'learn' must be true or false, got {o['learn']!r}", FIX)
    seed = _number(o, "seed", integer=True)
    if not 0 <= seed < 2**63:
        raise FGMError(f"mixture prior: option 'seed' must be 0 to 2**63 - 1, got {seed}", FIX)
    return {"components": k, "radius": radius, "std": std, "learn": o["learn"], "min_std": min_std, "seed": seed}


def initial_means(k: int, d: int, radius: float, seed: int) -> Tensor:
    """Spread-out starting means, (k, d): evenly on [-radius, radius] for d = 1, evenly on the
    circle of that radius for d = 2, on random directions (a generator seeded by ``seed``, not
    torch's global one) scaled to that radius otherwise."""
    if k == 1:
        return torch.zeros(1, d)
    if d == 1:
        return torch.linspace(-radius, radius, k).unsqueeze(1)
    if d == 2:
        a = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        return (radius * torch.stack([a.cos(), a.sin()], 1)).float()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(k, d, generator=g, dtype=torch.float64)
    return (radius * v / v.norm(dim=1, keepdim=True)).float()


class MixturePrior(Prior):
    """K equally weighted diagonal Gaussians: means ``means`` (K, d) and scales
    ``min_std + exp(rho)`` (K, d), so a scale moves in log space and never falls below
    ``min_std``. Sampling picks component floor(u K) and returns means[k] + std[k] * eps:
    gradients reach the means and scales of the picked components (the weights are fixed)."""

    needs_uniform = True

    def __init__(
        self,
        latent_dim: int,
        components: int = 8,
        radius: float = 2.0,
        std: float = 0.3,
        learn: bool = True,
        min_std: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim)
        self.components = int(components)
        self.min_std = float(min_std)
        means = initial_means(self.components, self.latent_dim, radius, seed)
        rho = torch.full((self.components, self.latent_dim), math.log(std - min_std))
        if learn:
            self.means = nn.Parameter(means)
            self.rho = nn.Parameter(rho)
        else:
            self.register_buffer("means", means)
            self.register_buffer("rho", rho)

    @property
    def stds(self) -> Tensor:
        return self.min_std + torch.exp(self.rho)

    def sample(self, eps: Tensor, u: Tensor | None) -> Tensor:
        if u is None:
            raise ValueError("the mixture prior needs uniforms u (B,) to pick components")
        k = (u * self.components).long().clamp_(0, self.components - 1)
        return self.means[k] + self.stds[k] * eps

    def log_prob(self, z: Tensor) -> Tensor:
        std = self.stds
        r = (z.unsqueeze(1) - self.means) / std  # (B, K, d)
        per = (-0.5 * (LOG_2PI + r * r) - torch.log(std)).sum(-1)  # (B, K)
        return torch.logsumexp(per, 1) - math.log(self.components)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "mixture",
            "components": self.components,
            "means": self.means.detach().cpu().double().tolist(),
            "stds": self.stds.detach().cpu().double().tolist(),
        }


def make_mixture(latent_dim: int, options: dict[str, Any]) -> MixturePrior:
    """The ``mixture`` factory: ``options`` are ``model.prior_options`` (see MIXTURE_OPTIONS)."""
    return MixturePrior(latent_dim, **mixture_options(options))


@hookimpl
def register_priors(register):
    register(
        "mixture",
        make_mixture,
        "K equal-weight diagonal Gaussians, learnable means and scales; "
        "options components=8, radius=2.0, std=0.3, learn=true, min_std=0.001, seed=0",
    )


__all__ = ["MIXTURE_OPTIONS", "MixturePrior", "initial_means", "make_mixture", "mixture_options", "register_priors"]
