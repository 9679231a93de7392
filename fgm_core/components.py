"""The component contracts that plugins implement: divergences, architectures, latent priors,
datasets, exporters.

Plugins register *factories* (callables returning one of these objects) under a name; the
core builds components by name from the configuration and never imports a plugin directly.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

CriticForm = Literal["density", "joint", "marginal"]
CRITIC_FORMS: tuple[str, ...] = ("density", "joint", "marginal")
DataKind = Literal["vector", "image"]


# --------------------------------------------------------------------------- divergences
class Divergence(ABC):
    """An f-divergence in the forms the three critics need (docs/math.md sections 2.1-2.2).

    ``T``/``C`` take the log density ratio ``s`` (density critic); ``activation``/``conjugate``
    serve free critics (joint, marginal). Every exponential goes through :meth:`exp`, which
    clamps its argument to ``max_exp`` and counts clamped entries in ``clamped``.
    """

    #: recorded by :meth:`describe` in exports; set it to the registered name (not checked).
    name: str = "divergence"
    #: f(1); 0 for a proper f-divergence, -log 4 for ``gan``.
    f_offset: float = 0.0
    #: f'(1): the critic value where the two joints agree ("real vs fake" threshold).
    f_prime_at_1: float = 0.0
    #: False when T(s) has no useful gradient (total variation): free critics only.
    supports_density: bool = True
    #: f strictly convex, so log (f')^{-1}(T) recovers the log density ratio.
    strictly_convex: bool = True
    #: E_P[C(s)] does not depend on the generator or encoder in expectation (kl: it is the
    #: integral of exp(l)), so their update drops it and computes the data side only: with kl
    #: this is the VAE update, and ``critic.n_critic = 0`` (no critic at all) becomes valid.
    model_term_constant: bool = False

    def __init__(self, max_exp: float = 40.0) -> None:
        self.max_exp = float(max_exp)
        self.clamped: Tensor | int = 0

    # -- numerics ------------------------------------------------------------------------
    def exp(self, x: Tensor) -> Tensor:
        """exp with its argument clamped to ``[-inf, max_exp]``; counts the clamped entries."""
        over = x.detach() > self.max_exp
        self.clamped = self.clamped + over.sum()
        return torch.exp(torch.clamp(x, max=self.max_exp))

    def pop_clamped(self) -> int:
        """Clamped entries since the last call (resets the counter)."""
        n = int(self.clamped) if isinstance(self.clamped, int) else int(self.clamped.item())
        self.clamped = 0
        return n

    # -- the generator function ----------------------------------------------------------
    @abstractmethod
    def f(self, u: Tensor) -> Tensor:
        """The convex generator f(u), u > 0."""

    # -- density critic: functions of s = log(Q/P) ---------------------------------------
    @abstractmethod
    def T(self, s: Tensor) -> Tensor:
        """T(s) = f'(e^s)."""

    @abstractmethod
    def C(self, s: Tensor) -> Tensor:
        """C(s) = f*(f'(e^s)) = e^s f'(e^s) - f(e^s)."""

    def log_T_prime(self, s: Tensor) -> Tensor | None:
        """log T'(s) = s + log f''(e^s): a sample's log weight in the gradient of J (the model
        side's is s + log T'(s), since C'(s) = e^s T'(s)). Lets the density critic step along
        J's gradient when every weight under- or overflows (``critic.rescale``). None: no closed
        form (the default); such a divergence is never rescaled."""
        return None

    # -- free critics ----------------------------------------------------------------------
    @abstractmethod
    def activation(self, v: Tensor) -> Tensor:
        """g_f: maps a raw critic output v in R onto dom f*."""

    @abstractmethod
    def conjugate(self, t: Tensor) -> Tensor:
        """f*(t), the convex conjugate, for t in dom f*."""

    def conj_act(self, v: Tensor) -> Tensor:
        """f*(g_f(v)); override with one stable formula where g_f(v) can round onto the
        boundary of dom f* (js, gan, hellinger)."""
        return self.conjugate(self.activation(v))

    def inverse_f_prime_log(self, t: Tensor) -> Tensor:
        """log (f')^{-1}(t): the log density ratio a free critic value implies.

        Used to read a data density out of a joint critic (docs/math.md section 4). The
        default solves f'(e^s) = t by bisection on s, valid for any strictly convex f.
        """
        lo = torch.full_like(t, -60.0)
        hi = torch.full_like(t, 60.0)
        for _ in range(80):
            mid = (lo + hi) / 2
            above = self.T(mid) > t
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return (lo + hi) / 2

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded in exports: name, f(1) and f'(1) only; override it
        to add the divergence's parameters."""
        return {"name": self.name, "f_offset": self.f_offset, "f_prime_at_1": self.f_prime_at_1}


DivergenceFactory = Callable[..., Divergence]
"""``factory(max_exp=..., **params) -> Divergence``; params come from ``divergence.params``.
A factory may carry ``main_param`` (a parameter name): the one the shorthand ``name:value``
sets (``alpha:0.5``; :mod:`fgm_core.divspec`)."""


# --------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class NetworkSpec:
    """What an architecture must build networks for."""

    data_shape: tuple[int, ...]  # one datum, e.g. (2,) or (1, 28, 28)
    data_kind: DataKind
    latent_dim: int
    critic: CriticForm
    options: dict[str, Any] = field(default_factory=dict)  # model.options from the config


@dataclass
class Networks:
    """The three f-GM networks, as plain modules.

    - ``encoder(x) -> (mu, logvar)``, each ``(B, latent_dim)``.
    - ``decoder(z) -> mean``, ``(B, *data_shape)`` in model units (the core adds the
      Gaussian noise scale).
    - ``critic(x, z=None)``: the density estimator l(x) for ``density``, V(x) for ``marginal``
      (both called as ``critic(x)``), V(x, z) for ``joint``; returns ``(B,)``. It must not
      depend on the rest of the batch (no batch statistics): data and model samples are
      scored in one call.
    """

    encoder: nn.Module
    decoder: nn.Module
    critic: nn.Module


class Architecture(ABC):
    """Builds the encoder, decoder and critic for a data shape and critic form."""

    name: str = "architecture"
    data_kinds: tuple[str, ...] = ("vector",)
    critic_forms: tuple[str, ...] = CRITIC_FORMS

    def check(self, spec: NetworkSpec) -> str | None:
        """Return why ``spec`` is unsupported (one line), or None. Called before training."""
        if spec.data_kind not in self.data_kinds:
            return (
                f"architecture {self.name!r} supports {'/'.join(self.data_kinds)} data, "
                f"not {spec.data_kind} data of shape {spec.data_shape}"
            )
        if spec.critic not in self.critic_forms:
            return f"architecture {self.name!r} supports critics {'/'.join(self.critic_forms)}, not {spec.critic!r}"
        return None

    @abstractmethod
    def build(self, spec: NetworkSpec) -> Networks:
        """Build fresh networks for ``spec`` (weights initialised from torch's global RNG)."""

    def prepare_export(self, networks: Networks) -> Networks:
        """Return export-ready copies in eval mode, with parametrizations such as spectral
        normalisation baked into plain weights. Override to adjust export further."""
        import copy

        from torch.nn.utils import parametrize

        out = copy.deepcopy(networks)
        for net in (out.encoder, out.decoder, out.critic):
            unshare_parametrized_classes(net)
            net.eval()
            for module in list(net.modules()):
                if parametrize.is_parametrized(module):
                    for pname in list(module.parametrizations.keys()):  # type: ignore[union-attr,operator]
                        parametrize.remove_parametrizations(module, pname, leave_parametrized=True)
        return out


ArchitectureFactory = Callable[[], Architecture]


def unshare_parametrized_classes(net: nn.Module) -> None:
    """Give every parametrized module of ``net`` (a deep copy) a class of its own.

    torch's parametrize injects one class per parametrized module and a deep copy shares it
    with the original; removing a parametrization from the copy (baking spectral norm) would
    otherwise delete the property from the shared class and break the original module.
    """
    from torch.nn.utils import parametrize

    for module in net.modules():
        if parametrize.is_parametrized(module):
            cls = module.__class__
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)


# --------------------------------------------------------------------------- priors
LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module, ABC):
    """The latent prior p(z): it appears in the log ratio s = l(x) + log q(z|x) - log p(z) -
    log p(x|z) and in every likelihood, and it is what the generator is fed when sampling.

    A prior is a module: its parameters train with the encoder and generator (one optimiser)
    and are saved with the model weights. It never draws random numbers itself: the caller
    passes standard-normal noise ``eps`` (B, d) and, when :attr:`needs_uniform` is True, one
    uniform number per row ``u`` (B,) for a discrete choice (a mixture component), so
    training noise stays in one seeded stream and a run that needs no uniforms draws none.
    """

    #: True when :meth:`sample` needs the uniforms ``u``; False lets callers skip drawing them.
    needs_uniform: bool = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)

    @abstractmethod
    def sample(self, eps: Tensor, u: Tensor | None) -> Tensor:
        """z ~ p(z) from eps ~ N(0, I) (B, d) and u ~ U(0, 1) (B,), reparameterised so that
        gradients reach the prior's parameters."""

    @abstractmethod
    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per row, (B,), computed in log space."""

    def describe(self) -> dict[str, Any]:
        """JSON-able kind and parameters, recorded in exports (the torch-free runtime samples
        z from it; it knows the kinds ``normal`` and ``mixture``)."""
        return {"kind": type(self).__name__}


class StandardNormal(Prior):
    """p(z) = N(0, I), no parameters: the default prior, part of the core so that it works with
    any plugin policy (``FGM_PLUGINS`` restricted to a few plugins included)."""

    def sample(self, eps: Tensor, u: Tensor | None) -> Tensor:
        return eps

    def log_prob(self, z: Tensor) -> Tensor:
        return (-0.5 * (LOG_2PI + z * z)).flatten(1).sum(1)

    def describe(self) -> dict[str, Any]:
        return {"kind": "normal"}


PriorFactory = Callable[[int, dict[str, Any]], Prior]
"""``factory(latent_dim, options) -> Prior``; options come from ``model.prior_options``. A bad
option raises :class:`fgm_core.errors.FGMError` naming it."""


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Scaling:
    """Affine map between data units and model units: ``model = (data - shift) / scale``."""

    shift: float = 0.0
    scale: float = 1.0

    def to_model(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def to_data(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def log_det(self, dims: int) -> float:
        """log |d model / d data| summed over ``dims`` dimensions (add to model log-density)."""
        return -dims * math.log(self.scale)


@dataclass
class DataBundle:
    """A loaded dataset in data units, held in memory as tensors."""

    name: str
    train: Tensor  # (N, *shape) float32
    test: Tensor  # (M, *shape) float32
    kind: DataKind
    scaling: Scaling = field(default_factory=Scaling)
    train_labels: Tensor | None = None  # (N,) int64
    test_labels: Tensor | None = None
    label_names: list[str] | None = None
    #: Gaussian-mixture ground truth: {"means": (K, D), "stds": (K, D), optional "weights": (K,)}.
    #: Evaluation needs it to assign samples to modes of labelled vector data.
    mixture: dict[str, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


@dataclass(frozen=True)
class DataRequest:
    """What the core asks a dataset factory for."""

    options: dict[str, Any]  # data.options from the config
    seed: int
    test_fraction: float


DatasetFactory = Callable[[DataRequest], DataBundle]
"""``factory(request) -> DataBundle``. A factory may also carry ``peek(options) -> (kind,
item shape or None) | None``: what its data will be, without loading it, so that image data
gets image defaults (:func:`fgm_core.config.kind_defaults`)."""


# --------------------------------------------------------------------------- exporters
class Exporter(ABC):
    """Turns a trained run into deployable files, and opens them again for inference."""

    name: str = "exporter"

    @abstractmethod
    def export(self, run: Any, out_dir: Path, **options: Any) -> dict[str, Any]:
        """Write the export of ``run`` (a :class:`fgm_core.run.Run`) into ``out_dir`` (a fresh
        directory) and return its manifest (JSON-able). Validate before returning; raise on
        failure. fgm then adds ``exporter`` and ``files`` (every file's sha256) to
        ``manifest.json`` and moves the directory into place; ``open`` should check them."""

    @abstractmethod
    def open(self, export_dir: Path, device: str = "auto") -> Any:
        """Open an export directory for inference. The returned object offers
        ``sample(n, seed)``, ``encode(x)``, ``log_likelihood(x, k, seed)`` and
        ``log_density(x)`` in data units, like :class:`fgm_core.run.Run`."""


ExporterFactory = Callable[[], Exporter]


__all__ = [
    "CRITIC_FORMS",
    "LOG_2PI",
    "Architecture",
    "ArchitectureFactory",
    "CriticForm",
    "DataBundle",
    "DataRequest",
    "DatasetFactory",
    "Divergence",
    "DivergenceFactory",
    "Exporter",
    "ExporterFactory",
    "NetworkSpec",
    "Networks",
    "Prior",
    "PriorFactory",
    "Scaling",
    "StandardNormal",
]
