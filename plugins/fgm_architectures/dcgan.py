"""``dcgan``: DCGAN-style convolutional f-GM networks (Radford et al. 2016) for images.

With ``C = channels`` (default 64) and n stride-2 stages (n = 2 for 28x28, 3 for 32x32,
4 for 64x64; the smallest feature map is 7x7 for 28x28 and 4x4 otherwise):

- decoder p(x|z): Linear(z -> C*2^(n-1) x s x s) -> norm -> ReLU, then n-1 times
  ConvTranspose2d(k4, s2, p1) halving the channels -> norm -> ReLU, then
  ConvTranspose2d(C -> image channels, k4, s2, p1) -> tanh (model units are [-1, 1]).
- encoder q(z|x): Conv2d(k4, s2, p1) image channels -> C -> LeakyReLU(0.2), then n-1 times
  Conv2d(k4, s2, p1) doubling the channels -> norm -> LeakyReLU(0.2); flatten; Linear heads
  for mu and logvar (logvar softly bounded, initialised small).
- critic: the encoder's conv trunk with ``critic_norm`` (none or layer norm, never batch
  norm) -> flatten -> Linear(1) for ``density`` (the density estimator l(x)) and
  ``marginal`` (V(x)). For ``joint``, z goes through Linear(z_hidden) -> LeakyReLU ->
  Linear(z_hidden) -> LeakyReLU, is concatenated with the x features, and the head is
  Linear(z_hidden) -> LeakyReLU -> Linear(1): V(x, z).

``norm`` is batch norm by default in encoder and decoder, as in DCGAN. Conv layers use the
DCGAN initialisation N(0, 0.02). Images: 28x28, 32x32 or 64x64, 1 or 3 channels.
"""

from __future__ import annotations

from torch import nn

from fgm_core.components import Networks, NetworkSpec
from fgm_core.hookspecs import hookimpl

from .common import (
    LEAKY_SLOPE,
    LOGVAR_BOUND,
    Critic,
    Encoder,
    Flatten,
    ImageArchitecture,
    Option,
    Reshape,
    dcgan_init,
    norm2d,
)

SCHEMA: tuple[Option, ...] = (
    Option(
        "channels",
        64,
        int,
        "base width: channels of the first encoder/critic conv and last decoder stage, doubled at each stride-2 stage",
        minimum=1,
    ),
    Option("norm", "batch", str, "normalisation in encoder and decoder", choices=("batch", "layer", "none")),
    Option("critic_norm", "none", str, "normalisation in the critic (never batch norm)", choices=("none", "layer")),
    Option("z_hidden", 512, int, "joint critic: width of the z embedding and of the joint head", minimum=1),
    LOGVAR_BOUND,
)


def stages(size: int) -> tuple[int, int]:
    """(number of stride-2 stages, smallest feature-map size) for a square image size."""
    return {28: (2, 7), 32: (3, 4), 64: (4, 4)}[size]


def conv_trunk(in_ch: int, base: int, n: int, norm: str) -> tuple[nn.Sequential, int]:
    """DCGAN discriminator trunk: n stride-2 convs, no norm on the first; returns (trunk, top)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, base, 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE)]
    ch = base
    for _ in range(n - 1):
        layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm == "none"))
        ch *= 2
        nrm = norm2d(norm, ch)
        if nrm is not None:
            layers.append(nrm)
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    layers.append(Flatten())
    return nn.Sequential(*layers), ch


def generator(latent: int, out_ch: int, base: int, n: int, s0: int, norm: str) -> nn.Sequential:
    top = base * 2 ** (n - 1)
    layers: list[nn.Module] = [nn.Linear(latent, top * s0 * s0, bias=norm == "none"), Reshape(top, s0, s0)]
    nrm = norm2d(norm, top)
    if nrm is not None:
        layers.append(nrm)
    layers.append(nn.ReLU())
    ch = top
    for _ in range(n - 1):
        layers.append(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=norm == "none"))
        ch //= 2
        nrm = norm2d(norm, ch)
        if nrm is not None:
            layers.append(nrm)
        layers.append(nn.ReLU())
    layers += [nn.ConvTranspose2d(ch, out_ch, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


class DCGANArchitecture(ImageArchitecture):
    """DCGAN encoder, generator and critic (see the module docstring)."""

    name = "dcgan"
    schema = SCHEMA

    def build(self, spec: NetworkSpec) -> Networks:
        o = self.ensure(spec)
        c, size, _ = (int(s) for s in spec.data_shape)
        n, s0 = stages(size)
        base, d = o["channels"], spec.latent_dim

        decoder = generator(d, c, base, n, s0, o["norm"])
        trunk, top = conv_trunk(c, base, n, o["norm"])
        encoder = Encoder(trunk, top * s0 * s0, d, o["logvar_bound"])

        x_trunk, top = conv_trunk(c, base, n, o["critic_norm"])
        feat = top * s0 * s0
        if spec.critic == "joint":
            zh = o["z_hidden"]
            z_net = nn.Sequential(
                nn.Linear(d, zh), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(zh, zh), nn.LeakyReLU(LEAKY_SLOPE)
            )
            head = nn.Sequential(nn.Linear(feat + zh, zh), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(zh, 1))
            critic = Critic("joint", x_trunk, head, z_net)
        else:
            critic = Critic(spec.critic, x_trunk, nn.Linear(feat, 1))

        for net in (encoder, decoder, critic):
            dcgan_init(net)
        return Networks(encoder=encoder, decoder=decoder, critic=critic)


@hookimpl
def register_architectures(register):
    register(
        "dcgan",
        DCGANArchitecture,
        "DCGAN conv encoder/generator/critic for 28x28, 32x32 and 64x64 images, 1 or 3 channels "
        "(options: channels, norm, critic_norm, z_hidden, logvar_bound)",
    )


@hookimpl
def plugin_preset():
    return {
        "model": {"architecture": "dcgan", "latent_dim": 32, "sigma": 0.1},
        "divergence": {"name": "kl"},  # VAE-like updates: recognisable images fastest on a CPU
        "data": {"dataset": "shapes"},
        "optim": {"batch_size": 64, "lr": 2e-4},
        "run": {"steps": 3000, "checkpoint_every": 500},
    }
