"""Building blocks shared by the built-in architectures (``mlp``, ``dcgan``, ``wgan_arch``).

- :class:`Option` / :func:`resolve_options`: typed ``model.options`` with defaults; an unknown
  option or a bad value raises :class:`~fgm_core.errors.FGMError` naming the option and
  listing what is accepted.
- :func:`activation`, :func:`norm1d`, :func:`norm2d`: layer factories by name.
- :class:`GaussianHead`: the encoder's ``(mu, logvar)`` heads, with ``logvar`` softly bounded
  (``bound * tanh(raw / bound)``) and its layer initialised small, so q(z|x) starts near
  N(mu, I) and training starts stable.
- :class:`Critic`: ``forward(x, z=None) -> (B,)`` around an x-feature trunk; for the joint
  form z goes through a small MLP and is concatenated with the x features before the head.
  The same module is the density estimator l(x) (``density``) or V(x) (``marginal``), both
  ignoring ``z``. Critics never use batch normalisation (per-sample densities and gradient
  penalties must stay per-sample).

Everything is initialised from torch's global RNG and uses ONNX-friendly ops only
(``flatten(1)``, ``reshape(-1, ...)``, slicing, no shape branching on the batch size).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fgm_core.components import Architecture, NetworkSpec
from fgm_core.errors import FGMError

ACTIVATIONS = ("relu", "leaky_relu", "elu", "silu", "tanh")
LEAKY_SLOPE = 0.2


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    """One entry of ``model.options``: name, default, type and the accepted values."""

    name: str
    default: Any
    kind: type  # int, float, bool or str
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    allow_none: bool = False

    def accepted(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        what = {int: "an integer", float: "a number"}.get(self.kind, self.kind.__name__)
        if self.minimum is not None:
            what += f" >= {self.minimum:g}"
        if self.allow_none:
            what += " (or unset)"
        return what

    def validate(self, arch: str, value: Any) -> Any:
        if value is None and self.allow_none:
            return None
        ok = True
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                value = float(value)
        elif self.kind is str:
            ok = isinstance(value, str)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None:
            ok = value >= self.minimum
        if not ok:
            raise FGMError(
                f"model.options.{self.name} = {value!r} is not valid for architecture {arch!r}",
                f"{self.name} must be {self.accepted()} ({self.doc})",
            )
        return value


def resolve_options(arch: str, options: dict[str, Any] | None, schema: Sequence[Option]) -> dict[str, Any]:
    """Defaults overlaid with ``options``; raises FGMError on unknown names or bad values."""
    by_name = {o.name: o for o in schema}
    options = dict(options or {})
    for key in options:
        if key not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise FGMError(
                f"unknown option model.options.{key} for architecture {arch!r}",
                f"{hint}accepted options: {', '.join(by_name)}",
            )
    return {o.name: o.validate(arch, options[o.name]) if o.name in options else o.default for o in schema}


def options_table(schema: Sequence[Option]) -> list[dict[str, Any]]:
    """The options as rows (name, default, accepted, doc), for docs and ``fgm plugins``."""
    return [{"name": o.name, "default": o.default, "accepted": o.accepted(), "doc": o.doc} for o in schema]


# Options every built-in architecture shares.
LOGVAR_BOUND = Option(
    "logvar_bound",
    10.0,
    float,
    "soft bound on the encoder's log-variance: logvar = b*tanh(raw/b); 0 disables it",
    minimum=0.0,
)


# --------------------------------------------------------------------------- layers
def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "elu":
        return nn.ELU()
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")  # options are validated before this


def norm1d(kind: str, width: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return None


def norm2d(kind: str, channels: int) -> nn.Module | None:
    """Batch norm, or layer norm over (C, H, W) as one-group GroupNorm (per-sample)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return None


def mlp(widths: Sequence[int], act: str, norm: str = "none") -> nn.Sequential:
    """Linear -> [norm] -> activation for each consecutive pair of ``widths``."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(a, b))
        n = norm1d(norm, b)
        if n is not None:
            layers.append(n)
        layers.append(activation(act))
    return nn.Sequential(*layers)


class Reshape(nn.Module):
    """``x.reshape(-1, *shape)``: keeps the batch dimension dynamic for export."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Flatten(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class Crop(nn.Module):
    """Keep the top-left ``size x size`` pixels (the WGAN-GP 8x8 -> 7x7 crop for 28x28)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : self.size, : self.size]

    def extra_repr(self) -> str:
        return f"size={self.size}"


class GaussianHead(nn.Module):
    """Features -> (mu, logvar), each (B, latent_dim); logvar softly bounded, starts near 0."""

    def __init__(self, in_features: int, latent_dim: int, logvar_bound: float = 10.0) -> None:
        super().__init__()
        self.mu = nn.Linear(in_features, latent_dim)
        self.logvar = nn.Linear(in_features, latent_dim)
        self.logvar_bound = float(logvar_bound)
        with torch.no_grad():
            self.logvar.weight.mul_(0.1)
            self.logvar.bias.zero_()

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.mu(h)
        logvar = self.logvar(h)
        if self.logvar_bound > 0:
            logvar = self.logvar_bound * torch.tanh(logvar / self.logvar_bound)
        return mu, logvar

    def extra_repr(self) -> str:
        return f"logvar_bound={self.logvar_bound:g}"


class Encoder(nn.Module):
    """q(z|x): ``trunk(x)`` features -> :class:`GaussianHead`."""

    def __init__(self, trunk: nn.Module, features: int, latent_dim: int, logvar_bound: float) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = GaussianHead(features, latent_dim, logvar_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.trunk(x))


class Critic(nn.Module):
    """The critic in its three forms, ``forward(x, z=None) -> (B,)``.

    ``x_trunk(x)`` gives flat features of x. For ``joint``, ``z_net(z)`` embeds z and the two
    are concatenated before ``head``; for ``density`` and ``marginal`` z is ignored.
    """

    def __init__(self, form: str, x_trunk: nn.Module, head: nn.Module, z_net: nn.Module | None = None) -> None:
        super().__init__()
        if (form == "joint") != (z_net is not None):
            raise ValueError("a joint critic needs a z network, other forms must not have one")
        self.form = form
        self.x_trunk = x_trunk
        self.z_net = z_net
        self.head = head

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        h = self.x_trunk(x)
        if self.z_net is not None:
            if z is None:
                raise ValueError("the joint critic V(x, z) needs z")
            h = torch.cat([h, self.z_net(z)], dim=1)
        return self.head(h).reshape(-1)

    def extra_repr(self) -> str:
        return f"form={self.form!r}"


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- base classes
class SchemaArchitecture(Architecture):
    """An architecture whose ``model.options`` are declared by a schema of :class:`Option`."""

    schema: tuple[Option, ...] = ()

    def options(self, spec: NetworkSpec) -> dict[str, Any]:
        return resolve_options(self.name, spec.options, self.schema)


class ImageArchitecture(SchemaArchitecture):
    """Base for the convolutional architectures: square images, 1 or 3 channels."""

    data_kinds = ("image",)
    sizes: tuple[int, ...] = (28, 32, 64)
    channels: tuple[int, ...] = (1, 3)

    def check(self, spec: NetworkSpec) -> str | None:
        why = super().check(spec)
        if why:
            return why
        shape = tuple(spec.data_shape)
        sizes = "/".join(f"{s}x{s}" for s in self.sizes)
        chans = " or ".join(str(c) for c in self.channels)
        if len(shape) != 3:
            return f"architecture {self.name!r} needs images shaped (C, H, W), got {shape}"
        c, h, w = shape
        if c not in self.channels or h != w or h not in self.sizes:
            return (
                f"architecture {self.name!r} supports {sizes} images with {chans} channels, not {c}x{h}x{w} (C x H x W)"
            )
        if spec.latent_dim < 1:
            return f"latent_dim must be at least 1, got {spec.latent_dim}"
        self.options(spec)  # raises FGMError on bad options
        return None

    def ensure(self, spec: NetworkSpec) -> dict[str, Any]:
        why = self.check(spec)
        if why:
            raise FGMError(why, "choose another architecture or resize the data")
        return self.options(spec)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ACTIVATIONS",
    "Critic",
    "Crop",
    "Encoder",
    "Flatten",
    "GaussianHead",
    "ImageArchitecture",
    "LEAKY_SLOPE",
    "LOGVAR_BOUND",
    "Option",
    "Reshape",
    "activation",
    "count_parameters",
    "dcgan_init",
    "mlp",
    "norm1d",
    "norm2d",
    "options_table",
    "resolve_options",
]
