"""``mlp``: fully connected f-GM networks for vectors (and flattened images).

- encoder q(z|x): flatten x -> ``depth`` x [Linear(hidden) -> norm -> activation] ->
  Linear heads for mu and logvar (logvar softly bounded, its layer initialised small).
- decoder p(x|z): z -> ``depth`` x [Linear(hidden) -> norm -> activation] -> Linear(D),
  reshaped to the data shape; linear output for vectors, tanh for images (model units are
  [-1, 1]).
- critic: flatten x (optionally with random Fourier features, ``critic_fourier``),
  concatenated with z for the joint form -> ``critic_depth`` x
  [Linear(critic_hidden) -> critic_norm -> activation] -> Linear(1). It is the density
  estimator l(x) for ``density``, V(x) for ``marginal`` and V(x, z) for ``joint``. The critic
  has no batch normalisation (layer norm or none).

Data: vectors of shape (D,) and images of shape (C, H, W) (flattened), any size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fgm_core.components import Networks, NetworkSpec
from fgm_core.errors import FGMError
from fgm_core.hookspecs import hookimpl

from .common import (
    ACTIVATIONS,
    LOGVAR_BOUND,
    Critic,
    Encoder,
    Flatten,
    Option,
    Reshape,
    SchemaArchitecture,
    mlp,
)

SCHEMA: tuple[Option, ...] = (
    Option("hidden", 128, int, "width of the hidden layers of encoder and decoder", minimum=1),
    Option("depth", 3, int, "number of hidden layers of encoder and decoder", minimum=1),
    Option("activation", "leaky_relu", str, "hidden activation (leaky_relu has slope 0.2)", choices=ACTIVATIONS),
    Option("norm", "none", str, "normalisation in encoder and decoder", choices=("none", "layer", "batch")),
    Option(
        "critic_hidden", None, int, "width of the critic's hidden layers (default: hidden)", minimum=1, allow_none=True
    ),
    Option("critic_depth", None, int, "number of critic hidden layers (default: depth)", minimum=1, allow_none=True),
    Option("critic_norm", "none", str, "normalisation in the critic (never batch norm)", choices=("none", "layer")),
    Option(
        "critic_fourier",
        0,
        int,
        "random Fourier features of x in front of the critic: number of frequencies (0: none)",
        minimum=0,
    ),
    Option(
        "critic_fourier_scale",
        30.0,
        float,
        "std of the Fourier frequencies, per model unit of x (about 0.3 / the finest data scale)",
        minimum=0.0,
    ),
    LOGVAR_BOUND,
)


class FourierFeatures(nn.Module):
    """x -> [x, sin(x B), cos(x B)] with fixed random frequencies B ~ N(0, scale^2) (D, n).

    A plain MLP on raw coordinates cannot resolve a density whose log varies over a few
    hundredths of a unit (ring8's modes have std 0.01): regressed directly on the exact log
    p_D it stays near the per-mode mean (Spearman about 0); with these features it fits it.
    In the js game (saddle loss) such a critic wins outright and the generator collapses, so
    the features are opt-in (see benchmarks/README.md, "Density estimator fidelity")."""

    freq: torch.Tensor

    def __init__(self, dim: int, n: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("freq", scale * torch.randn(dim, n))

    @property
    def out_features(self) -> int:
        return int(self.freq.shape[0] + 2 * self.freq.shape[1])

    def forward(self, x):
        h = x @ self.freq
        return torch.cat([x, torch.sin(h), torch.cos(h)], dim=1)


class MLPDecoder(nn.Module):
    """z -> hidden layers -> Linear(D) -> reshape to the data shape -> tanh for images."""

    def __init__(self, body: nn.Module, out: nn.Module, shape: tuple[int, ...], image: bool) -> None:
        super().__init__()
        self.body = body
        self.out = out
        self.reshape = Reshape(*shape)
        self.squash = nn.Tanh() if image else nn.Identity()

    def forward(self, z):
        return self.squash(self.reshape(self.out(self.body(z))))


class MLPArchitecture(SchemaArchitecture):
    """Fully connected encoder, decoder and critic (see the module docstring)."""

    name = "mlp"
    data_kinds = ("vector", "image")
    schema = SCHEMA

    def check(self, spec: NetworkSpec) -> str | None:
        why = super().check(spec)
        if why:
            return why
        shape = tuple(spec.data_shape)
        want = 1 if spec.data_kind == "vector" else 3
        if len(shape) != want or any(int(s) < 1 for s in shape):
            layout = "(D,)" if want == 1 else "(C, H, W)"
            return f"architecture 'mlp' needs {spec.data_kind} data shaped {layout}, got {shape}"
        if spec.latent_dim < 1:
            return f"latent_dim must be at least 1, got {spec.latent_dim}"
        self.options(spec)  # raises FGMError on bad options
        return None

    def build(self, spec: NetworkSpec) -> Networks:
        why = self.check(spec)
        if why:
            raise FGMError(why, "choose another architecture or reshape the data")
        o = self.options(spec)
        shape = tuple(int(s) for s in spec.data_shape)
        dim = math.prod(shape)
        d = spec.latent_dim
        h, depth, act = o["hidden"], o["depth"], o["activation"]
        ch = o["critic_hidden"] or h
        cdepth = o["critic_depth"] or depth

        enc_body = nn.Sequential(Flatten(), mlp([dim] + [h] * depth, act, o["norm"]))
        encoder = Encoder(enc_body, h, d, o["logvar_bound"])

        decoder = MLPDecoder(
            mlp([d] + [h] * depth, act, o["norm"]), nn.Linear(h, dim), shape, spec.data_kind == "image"
        )

        joint = spec.critic == "joint"
        n_fourier = o["critic_fourier"]
        trunk: nn.Module = Flatten()
        x_features = dim
        if n_fourier:
            features = FourierFeatures(dim, n_fourier, o["critic_fourier_scale"])
            trunk, x_features = nn.Sequential(Flatten(), features), features.out_features
        head = nn.Sequential(
            mlp([x_features + (d if joint else 0)] + [ch] * cdepth, act, o["critic_norm"]), nn.Linear(ch, 1)
        )
        critic = Critic(spec.critic, trunk, head, nn.Identity() if joint else None)
        return Networks(encoder=encoder, decoder=decoder, critic=critic)


@hookimpl
def register_architectures(register):
    register(
        "mlp",
        MLPArchitecture,
        "fully connected encoder/decoder/critic for vectors and flattened images "
        "(options: hidden, depth, activation, norm, critic_hidden, critic_depth, critic_norm, "
        "critic_fourier, critic_fourier_scale, logvar_bound)",
    )


@hookimpl
def plugin_preset():
    return {"model": {"architecture": "mlp"}}
