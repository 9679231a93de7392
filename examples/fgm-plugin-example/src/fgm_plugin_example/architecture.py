"""``tiny_mlp``: a small fully connected encoder, decoder and critic for vector data.

The Networks contract (fgm_core.components):

- ``encoder(x) -> (mu, logvar)``, each ``(B, latent_dim)``;
- ``decoder(z) -> mean``, ``(B, *data_shape)`` in model units (the core adds the noise);
- ``critic(x, z=None) -> (B,)``: the density estimator l(x) (``density``) or V(x)
  (``marginal``), both ignoring z, or V(x, z) (``joint``).

Options (``[model.options]``): ``hidden`` (width, default 64) and ``depth`` (hidden layers,
default 2). Unknown options and bad values are errors that name them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fgm_core.components import Architecture, NetworkSpec, Networks
from fgm_core.errors import FGMError

DEFAULTS: dict[str, int] = {"hidden": 64, "depth": 2}
LOGVAR_BOUND = 10.0


def _body(n_in: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers)


class TinyEncoder(nn.Module):
    """q(z|x): x -> MLP -> (mu, logvar), logvar softly bounded to (-10, 10)."""

    def __init__(self, dim: int, latent_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.body = _body(dim, hidden, depth)
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        with torch.no_grad():  # start near q(z|x) = N(mu, I): a stable first step
            self.logvar.weight.mul_(0.1)
            self.logvar.bias.zero_()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x.flatten(1))
        return self.mu(h), LOGVAR_BOUND * torch.tanh(self.logvar(h) / LOGVAR_BOUND)


class TinyDecoder(nn.Module):
    """p(x|z) mean: z -> MLP -> Linear(D), reshaped to the data shape (linear output)."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], hidden: int, depth: int) -> None:
        super().__init__()
        self.shape = shape
        dim = 1
        for s in shape:
            dim *= s
        self.body = _body(latent_dim, hidden, depth)
        self.out = nn.Linear(hidden, dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.body(z)).reshape(-1, *self.shape)


class TinyCritic(nn.Module):
    """``forward(x, z=None) -> (B,)``; the joint form concatenates z to the flat x."""

    def __init__(self, form: str, dim: int, latent_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        self.form = form
        self.joint = form == "joint"
        self.body = _body(dim + (latent_dim if self.joint else 0), hidden, depth)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        h = x.flatten(1)
        if self.joint:
            if z is None:
                raise ValueError("the joint critic V(x, z) needs z")
            h = torch.cat([h, z], dim=1)
        return self.head(self.body(h)).reshape(-1)


class TinyMLP(Architecture):
    """Small MLPs for vectors of shape (D,), with all three critic forms."""

    name = "tiny_mlp"
    data_kinds = ("vector",)
    critic_forms = ("density", "joint", "marginal")

    def options(self, spec: NetworkSpec) -> dict[str, Any]:
        """``model.options`` over the defaults; FGMError for unknown keys or bad values."""
        out = dict(DEFAULTS)
        for key, value in spec.options.items():
            if key not in DEFAULTS:
                raise FGMError(f"unknown option model.options.{key} for architecture 'tiny_mlp'",
                               f"accepted options: {', '.join(DEFAULTS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FGMError(f"model.options.{key} = {value!r} is not valid for architecture 'tiny_mlp'",
                               f"{key} must be an integer >= 1")
            out[key] = value
        return out

    def check(self, spec: NetworkSpec) -> str | None:
        why = super().check(spec)  # data kind and critic form
        if why:
            return why
        if len(spec.data_shape) != 1:
            return f"architecture 'tiny_mlp' needs vectors shaped (D,), got {tuple(spec.data_shape)}"
        self.options(spec)  # raises FGMError on bad options
        return None

    def build(self, spec: NetworkSpec) -> Networks:
        why = self.check(spec)
        if why:
            raise FGMError(why, "choose another architecture (see `fgm plugins`)")
        o = self.options(spec)
        h, depth = o["hidden"], o["depth"]
        shape = tuple(int(s) for s in spec.data_shape)
        dim, d = shape[0], spec.latent_dim
        return Networks(
            encoder=TinyEncoder(dim, d, h, depth),
            decoder=TinyDecoder(d, shape, h, depth),
            critic=TinyCritic(spec.critic, dim, d, h, depth),
        )
