"""``wgan_arch``: the convolutional networks of the WGAN-GP image experiments, as f-GM's three.

After Gulrajani et al. 2017 ("Improved Training of Wasserstein GANs"), the DCGAN-like
64-dim models of their MNIST/CIFAR-10 code, with ``D = dim`` (default 64):

- decoder p(x|z): Linear(z -> 4*4*4D) -> ReLU -> reshape (4D, 4, 4) ->
  ConvTranspose2d(4D -> 2D, k5, s2) -> ReLU -> [crop 8x8 to 7x7 for 28x28] ->
  ConvTranspose2d(2D -> D, k5, s2) -> ReLU -> ConvTranspose2d(D -> image channels, k5, s2)
  -> tanh (model units are [-1, 1]; the original MNIST model ends in a sigmoid on [0, 1]).
  ``norm = "batch"`` adds the batch norm of their CIFAR-10 generator after the Linear and
  each hidden deconvolution.
- critic: Conv2d(C -> D, k5, s2, p2) -> LeakyReLU(0.2) -> Conv2d(D -> 2D) -> LeakyReLU ->
  Conv2d(2D -> 4D) -> LeakyReLU -> flatten (4*4*4D) -> Linear(1); no batch norm (the
  gradient penalty is per sample; ``critic_norm = "layer"`` adds layer norm). It is the
  density estimator l(x) for ``density`` and V(x) for ``marginal``. For ``joint``, z goes
  through Linear(z_hidden) -> LeakyReLU -> Linear(z_hidden) -> LeakyReLU and is concatenated
  with the x features; the head becomes Linear(z_hidden) -> LeakyReLU -> Linear(1): V(x, z).
- encoder q(z|x): the critic's conv trunk (with ``norm``) -> flatten -> Linear heads for mu
  and logvar (logvar softly bounded, initialised small).

Images: 28x28 and 32x32 (three stride-2 stages down to 4x4), and 64x64 (one more stage,
8D channels at 4x4), with 1 or 3 channels. Deconvolutions are ConvTranspose2d(k5, s2, p2,
output_padding 1), which doubles the size exactly as the original's "Deconv2D". Weights use
PyTorch's default initialisation.
"""

from __future__ import annotations

from torch import nn

from fgm_core.components import Networks, NetworkSpec
from fgm_core.hookspecs import hookimpl

from .common import (
    LEAKY_SLOPE,
    LOGVAR_BOUND,
    Critic,
    Crop,
    Encoder,
    Flatten,
    ImageArchitecture,
    Option,
    Reshape,
    norm2d,
)

SCHEMA: tuple[Option, ...] = (
    Option(
        "dim", 64, int, "base width DIM: the convs have DIM, 2*DIM, 4*DIM (and 8*DIM for 64x64) channels", minimum=1
    ),
    Option(
        "norm",
        "none",
        str,
        "normalisation in decoder and encoder (batch: the CIFAR-10 generator)",
        choices=("none", "batch", "layer"),
    ),
    Option("critic_norm", "none", str, "normalisation in the critic (never batch norm)", choices=("none", "layer")),
    Option("z_hidden", 512, int, "joint critic: width of the z embedding and of the joint head", minimum=1),
    LOGVAR_BOUND,
)


def _stages(size: int) -> int:
    return 4 if size == 64 else 3


def conv_trunk(in_ch: int, dim: int, n: int, norm: str) -> tuple[nn.Sequential, int]:
    """WGAN-GP critic trunk: n Conv2d(k5, s2, p2) + LeakyReLU; norm after all but the first."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, dim, 5, 2, 2), nn.LeakyReLU(LEAKY_SLOPE)]
    ch = dim
    for _ in range(n - 1):
        layers.append(nn.Conv2d(ch, ch * 2, 5, 2, 2))
        ch *= 2
        nrm = norm2d(norm, ch)
        if nrm is not None:
            layers.append(nrm)
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    layers.append(Flatten())
    return nn.Sequential(*layers), ch


def generator(latent: int, out_ch: int, dim: int, n: int, size: int, norm: str) -> nn.Sequential:
    top = dim * 2 ** (n - 1)
    layers: list[nn.Module] = [nn.Linear(latent, 4 * 4 * top)]
    layers.append(Reshape(top, 4, 4))
    nrm = norm2d(norm, top)
    if nrm is not None:
        layers.append(nrm)
    layers.append(nn.ReLU())
    ch = top
    for i in range(n - 1):
        layers.append(nn.ConvTranspose2d(ch, ch // 2, 5, 2, 2, output_padding=1))
        ch //= 2
        nrm = norm2d(norm, ch)
        if nrm is not None:
            layers.append(nrm)
        layers.append(nn.ReLU())
        if i == 0 and size == 28:
            layers.append(Crop(7))
    layers += [nn.ConvTranspose2d(ch, out_ch, 5, 2, 2, output_padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


class WGANArchitecture(ImageArchitecture):
    """WGAN-GP encoder, generator and critic (see the module docstring)."""

    name = "wgan_arch"
    schema = SCHEMA

    def build(self, spec: NetworkSpec) -> Networks:
        o = self.ensure(spec)
        c, size, _ = (int(s) for s in spec.data_shape)
        n = _stages(size)
        dim, d = o["dim"], spec.latent_dim

        decoder = generator(d, c, dim, n, size, o["norm"])
        trunk, top = conv_trunk(c, dim, n, o["norm"])
        encoder = Encoder(trunk, top * 4 * 4, d, o["logvar_bound"])

        x_trunk, top = conv_trunk(c, dim, n, o["critic_norm"])
        feat = top * 4 * 4
        if spec.critic == "joint":
            zh = o["z_hidden"]
            z_net = nn.Sequential(
                nn.Linear(d, zh), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(zh, zh), nn.LeakyReLU(LEAKY_SLOPE)
            )
            head = nn.Sequential(nn.Linear(feat + zh, zh), nn.LeakyReLU(LEAKY_SLOPE), nn.Linear(zh, 1))
            critic = Critic("joint", x_trunk, head, z_net)
        else:
            critic = Critic(spec.critic, x_trunk, nn.Linear(feat, 1))
        return Networks(encoder=encoder, decoder=decoder, critic=critic)


@hookimpl
def register_architectures(register):
    register(
        "wgan_arch",
        WGANArchitecture,
        "WGAN-GP (Gulrajani et al. 2017) conv generator/critic plus a matching encoder, for "
        "28x28, 32x32 and 64x64 images (options: dim, norm, critic_norm, z_hidden, "
        "logvar_bound)",
    )


@hookimpl
def plugin_preset():
    return {
        # dim 32 and the kl (VAE-like) update give recognisable samples in minutes on a CPU;
        # raise model.options.dim to 64 (the paper's width) and pick any divergence on a GPU.
        "model": {"architecture": "wgan_arch", "latent_dim": 32, "sigma": 0.1, "options": {"dim": 32}},
        "divergence": {"name": "kl"},
        "data": {"dataset": "shapes"},
        "critic": {"gradient_penalty": 10.0},
        "optim": {"batch_size": 64, "lr": 2e-4},
        "run": {"steps": 3000, "checkpoint_every": 500},
    }
