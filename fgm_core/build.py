"""Turning a validated configuration into components: data, divergence, networks, model.

The one place where config names become plugin components, used by training and by loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fgm_core.components import DataBundle, DataRequest, Divergence, NetworkSpec, Prior, Scaling, StandardNormal
from fgm_core.config import FGMConfig, check_device
from fgm_core.errors import PLUGIN_FAILURES, FGMError, PluginError, unknown_name
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet


@dataclass(frozen=True)
class DataInfo:
    """What a trained model must know about its data (stored as ``data.json``)."""

    dataset: str
    shape: tuple[int, ...]
    kind: str
    scaling: Scaling
    label_names: list[str] | None = None
    mixture: dict[str, list] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "shape": list(self.shape),
            "kind": self.kind,
            "scaling": {"shift": self.scaling.shift, "scale": self.scaling.scale},
            "label_names": self.label_names,
            "mixture": self.mixture,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataInfo:
        try:
            return cls(
                dataset=str(d["dataset"]),
                shape=tuple(int(s) for s in d["shape"]),
                kind=str(d["kind"]),
                scaling=Scaling(float(d["scaling"]["shift"]), float(d["scaling"]["scale"])),
                label_names=d.get("label_names"),
                mixture=d.get("mixture"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FGMError(f"data.json is missing or has a bad field ({e})", "the run directory is corrupt") from None

    @classmethod
    def from_bundle(cls, b: DataBundle) -> DataInfo:
        mixture = None
        if b.mixture is not None:
            mixture = {k: v.tolist() for k, v in b.mixture.items()}
        return cls(b.name, b.shape, b.kind, b.scaling, b.label_names, mixture)

    @property
    def dims(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def load_data(cfg: FGMConfig, plugins: PluginSet) -> DataBundle:
    """Load the configured dataset through its plugin and check what it returned."""
    comp = plugins.get("datasets", cfg.data.dataset)
    req = DataRequest(options=dict(cfg.data.options), seed=cfg.run.seed, test_fraction=cfg.data.test_fraction)
    try:
        bundle = comp.factory(req)
    except FGMError:
        raise
    except PLUGIN_FAILURES as e:  # noqa: BLE001
        raise PluginError(
            f"dataset {cfg.data.dataset!r} (plugin {comp.plugin!r}) failed: {type(e).__name__}: {e}",
            "check data.options, or report it to the plugin's author",
        ) from e
    for split in ("train", "test"):
        t = getattr(bundle, split)
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[0] == 0:
            raise FGMError(
                f"dataset {cfg.data.dataset!r} gave an empty or malformed {split} split",
                "check the data source and data.options",
            )
        if not torch.isfinite(t).all():
            raise FGMError(f"dataset {cfg.data.dataset!r} has NaN or inf values in its {split} split", "clean the data")
    return bundle


def make_divergence(cfg: FGMConfig, plugins: PluginSet) -> Divergence:
    comp = plugins.get("divergences", cfg.divergence.name)
    try:
        div = comp.factory(max_exp=cfg.divergence.max_exp, **cfg.divergence.params)
    except FGMError:
        raise
    except TypeError as e:
        raise FGMError(
            f"divergence {cfg.divergence.name!r}: bad parameters {cfg.divergence.params} ({e})",
            "check [divergence.params]",
        ) from None
    if cfg.critic.form == "density" and not div.supports_density:
        raise FGMError(
            f"divergence {cfg.divergence.name!r} gives no gradient with the density critic",
            'use critic.form = "joint" or "marginal"',
        )
    return div


def make_prior(cfg: FGMConfig, plugins: PluginSet) -> Prior:
    """The latent prior ``model.prior``: ``normal`` is the core's N(0, I) (so the default works
    under any plugin policy); any other name is a registered prior, built with
    ``(latent_dim, model.prior_options)``."""
    name, options = cfg.model.prior, dict(cfg.model.prior_options)
    if name == "normal":
        if options:
            raise FGMError(
                f"prior 'normal' takes no options, got model.prior_options = {options}",
                "remove model.prior_options, or pick a prior that has options (e.g. mixture)",
            )
        return StandardNormal(cfg.model.latent_dim)
    if name not in plugins.components["priors"] and name not in plugins.clashes["priors"]:
        raise unknown_name("prior", name, ["normal", *plugins.names("priors")])
    comp = plugins.get("priors", name)
    try:
        prior = comp.factory(cfg.model.latent_dim, options)
    except FGMError:
        raise
    except PLUGIN_FAILURES as e:  # noqa: BLE001
        raise PluginError(
            f"prior {name!r} (plugin {comp.plugin!r}) failed: {type(e).__name__}: {e}",
            "check model.prior_options, or report it to the plugin's author",
        ) from e
    if not isinstance(prior, Prior):
        raise PluginError(
            f"prior {name!r} (plugin {comp.plugin!r}) returned a {type(prior).__name__}, not a Prior",
            "report it to the plugin's author",
        )
    return prior


def exponential_T(divergence: Divergence) -> bool:
    """Whether T(s) = f'(e^s) grows exponentially as s -> -inf (|T(-20)| > 100): reverse_kl,
    neyman, hellinger, jeffrey, alpha < 1. Works for any divergence, custom ones included."""
    with torch.no_grad():
        t = float(divergence.T(torch.tensor([-20.0])).abs().max())
    divergence.pop_clamped()
    return t > 100.0


def resolve_generator_loss(cfg: FGMConfig, divergence: Divergence) -> str:
    """``critic.generator_loss`` with ``auto`` resolved.

    ``auto`` is ``saddle`` for the density critic with a divergence whose T grows exponentially
    as s -> -inf, where ``non_saturating`` has heavy-tailed generator gradients (measured by
    ``benchmarks/generator_loss_variance.py``), and ``non_saturating`` otherwise: with js and
    the density critic the saddle form saturates (the estimator separates the model's samples
    at once, J sits at its maximum log 4 and the default ring8 run learned 0 of 8 modes).
    """
    loss = cfg.critic.generator_loss
    if loss != "auto":
        return loss
    return "saddle" if cfg.critic.form == "density" and exponential_T(divergence) else "non_saturating"


def heavy_tailed_generator_loss(cfg: FGMConfig, divergence: Divergence) -> str | None:
    """Why the chosen ``critic.generator_loss`` is heavy-tailed for this divergence, or None.

    With the density critic, ``non_saturating`` puts -E_P[T(s)] in the generator loss. Where
    the model puts mass that the data lacks, s is very negative, and a T that grows
    exponentially there makes that term's gradient heavy-tailed.
    """
    if (
        cfg.critic.form != "density"
        or divergence.model_term_constant
        or resolve_generator_loss(cfg, divergence) != "non_saturating"
        or not exponential_T(divergence)
    ):
        return None
    return (
        f'critic.generator_loss = "non_saturating" with divergence {cfg.divergence.name!r} and the density '
        f"critic gives heavy-tailed generator gradients, since T(s) grows exponentially as s -> -inf "
        f'(use critic.generator_loss = "saddle" or "auto", the default)'
    )


def make_model(cfg: FGMConfig, plugins: PluginSet, info: DataInfo) -> FGMModel:
    """Build networks (seeded by ``run.seed``) and wrap them in an :class:`FGMModel`."""
    if cfg.model.generator == "deterministic" and cfg.critic.form == "density":
        raise FGMError(
            "a deterministic generator has no density, which the density critic needs",
            'set model.generator = "gaussian" or use critic.form = "joint"/"marginal"',
        )
    comp = plugins.get("architectures", cfg.model.architecture)
    arch = comp.factory()
    spec = NetworkSpec(
        info.shape,
        info.kind,  # type: ignore[arg-type]
        cfg.model.latent_dim,
        cfg.critic.form,
        dict(cfg.model.options),
    )
    why = arch.check(spec)
    if why:
        raise FGMError(why, "pick another architecture (see `fgm plugins`) or dataset/critic")
    divergence = make_divergence(cfg, plugins)
    if cfg.critic.n_critic == 0 and not (cfg.critic.form == "density" and divergence.model_term_constant):
        raise FGMError(
            f"critic.n_critic = 0 trains no critic, but divergence {cfg.divergence.name!r} with the "
            f"{cfg.critic.form} critic needs one for its generator update",
            "set critic.n_critic >= 1 (0 is for the plain VAE: kl with the density critic)",
        )
    torch.manual_seed(cfg.run.seed)
    try:
        nets = arch.build(spec)
    except FGMError:
        raise
    except PLUGIN_FAILURES as e:  # noqa: BLE001
        raise PluginError(
            f"architecture {cfg.model.architecture!r} (plugin {comp.plugin!r}) failed to build: "
            f"{type(e).__name__}: {e}",
            "check model.options",
        ) from e
    if cfg.critic.spectral_norm:
        apply_spectral_norm(nets.critic)
    prior = make_prior(cfg, plugins)  # after the networks: their seeded initialisation is unchanged
    warmup = None
    if cfg.divergence.warmup_steps:
        if cfg.critic.form != "density":
            raise FGMError(
                f"divergence.warmup_steps needs the density critic (critic.form is {cfg.critic.form!r}): "
                "a free critic's output means something else under kl",
                'set divergence.warmup_steps = 0, or critic.form = "density"',
            )
        warmup = plugins.get("divergences", "kl").factory(max_exp=cfg.divergence.max_exp)
    critic_div = None
    if cfg.critic.divergence:
        if cfg.critic.form != "density":
            raise FGMError(
                f"critic.divergence needs the density critic (critic.form is {cfg.critic.form!r})",
                'remove critic.divergence, or set critic.form = "density"',
            )
        critic_div = plugins.get("divergences", cfg.critic.divergence).factory(max_exp=cfg.divergence.max_exp)
        if not critic_div.supports_density:
            raise FGMError(
                f"critic.divergence {cfg.critic.divergence!r} gives no gradient with the density critic",
                "use js, kl or another divergence with a density form",
            )
    m = cfg.model
    return FGMModel(
        nets,
        divergence,
        critic_form=cfg.critic.form,
        data_shape=info.shape,
        latent_dim=m.latent_dim,
        generator=m.generator,
        sigma=m.sigma,
        learn_sigma=m.learn_sigma,
        sigma_per_dim=m.sigma_per_dim,
        min_sigma=m.min_sigma,
        generator_loss=resolve_generator_loss(cfg, divergence),
        gradient_penalty=cfg.critic.gradient_penalty,
        density_estimator=cfg.critic.n_critic > 0,
        prior=prior,
        warmup_divergence=warmup,
        critic_divergence=critic_div,
        rescale=cfg.critic.rescale,
    )


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectrally normalise every linear and convolution layer of ``module`` in place."""
    from torch.nn.utils.parametrizations import spectral_norm

    for sub in list(module.modules()):
        if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            spectral_norm(sub)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. An explicit ``cuda`` without CUDA, an unknown
    device name or a GPU index that does not exist is an error."""
    try:
        check_device(name)
    except ValueError as e:
        raise FGMError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from e
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FGMError(f"device {name!r} requested but CUDA is not available", "use --device cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise FGMError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
            f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}",
        )
    return torch.device(name)
