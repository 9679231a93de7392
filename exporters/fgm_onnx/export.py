"""The torch side of the ONNX exporter: one graph per role, validated before it is reported.

Roles (inputs and outputs in the data's own units; the data scaling is inside the graphs):

- ``generator``: ``z (B, d)`` and, for a Gaussian generator, ``eps (B, *shape)`` ->
  ``x (B, *shape)`` = to_data(mean(z) + sigma * eps).
- ``encoder``: ``x`` -> ``mu (B, d)``, ``logvar (B, d)`` of q(z|x).
- ``density``: density critic: ``x`` -> ``log_density (B,)`` = l(x) + log|d model/d data|.
  Free critics: ``x`` (and ``z (B, d)`` for the joint critic) -> ``critic (B,)``, the raw
  critic value V(x, z) or V(x); with a Gaussian generator and a strictly convex f also
  ``eps (K, B, d)`` -> ``log_density (B,)``, the estimate of docs/math.md section 4.
- ``likelihood`` (Gaussian generator only): ``x`` and ``eps (K, B, d)`` ->
  ``log_likelihood (B,)``, the importance-sampled log p(x) with K encoder draws.

Noise is always an input. B and K are dynamic. The graphs are computed by small modules
written for export (no Python arithmetic on shapes, so no dimension is baked in); parity is
checked against the model's own methods (:class:`fgm_core.model.FGMModel`) run in float64,
with a tolerance that grows with PyTorch float32's own error on each output
(:class:`Tolerance`). ``manifest.json`` is the client contract (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fgm_core.components import Networks, unshare_parametrized_classes
from fgm_core.errors import FGMError
from fgm_core.model import FGMModel

FORMAT_VERSION = 2  # the manifest's format; fgm_onnx.runtime.FORMAT_VERSION reads it
DEFAULT_OPSET = 18
PARITY_BATCHES = (1, 2, 7, 64)
PARITY_K = (1, 3, 5, 4)  # K used with each parity batch size (dynamic K is exercised too)
# Parity rule, per output (see _parity): against a float64 evaluation of the model,
# |onnx - ref64| <= ATOL + RTOL * |ref64| + PARITY_FACTOR * (torch float32's own worst error).
ATOL = 1e-5
RTOL = 1e-5
PARITY_FACTOR = 10.0
EXPORTERS = ("auto", "torchscript", "dynamo")
LOG_2PI = math.log(2 * math.pi)
BATCH, K = "batch", "k"


# --------------------------------------------------------------------------- export-friendly math
def _gauss_logp(x: Tensor, mean: Tensor, log_std: Tensor, dims: int) -> Tensor:
    """Diagonal Gaussian log density summed over the last ``dims`` dimensions (as FGMModel)."""
    r = (x - mean) * torch.exp(-log_std)
    out = -0.5 * (LOG_2PI + r * r) - log_std
    return out.flatten(out.dim() - dims).sum(-1) if dims > 1 else out.sum(-1)


class _Base(nn.Module):
    """Holds the export copy of the model and the data scaling as constants."""

    def __init__(self, model: FGMModel, shift: float, scale: float, dims: int) -> None:
        super().__init__()
        self.model = model
        self.eval()  # a wrapper starts in training mode; an exporter restoring it would flip the model too
        self.shift = float(shift)
        self.scale = float(scale)
        self.log_det = -dims * math.log(self.scale)
        self.ndim = len(model.data_shape)

    def to_model(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def to_data(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def _importance(self, xm: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """z = mu + std*eps (K, B, d); returns z, log p(z) + log p(x|z) - log q(z|x) (K, B),
        the flat z (K*B, d) and x repeated (K*B, *shape)."""
        m = self.model
        mu, logvar = m.encode(xm)
        z = mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps  # (K, B, d)
        zf = z.reshape(-1, z.shape[-1])
        mean = m.decoder(zf).reshape(eps.shape[0], -1, *m.data_shape)  # (K, B, *shape)
        log_sigma = m.log_sigma
        log_px = _gauss_logp(xm.unsqueeze(0), mean, log_sigma, self.ndim)
        log_q = _gauss_logp(z, mu.unsqueeze(0), 0.5 * logvar.unsqueeze(0), 1)
        log_pz = m.prior.log_prob(zf).reshape(eps.shape[0], -1)  # the model's own p(z), (K, B)
        log_w = log_pz + log_px - log_q
        xf = xm.unsqueeze(0).expand(eps.shape[0], *xm.shape).reshape(-1, *m.data_shape)
        return z, log_w, zf, xf


class GeneratorGraph(_Base):
    def forward(self, z: Tensor, eps: Tensor) -> Tensor:
        m = self.model
        return self.to_data(m.decoder(z) + torch.exp(m.log_sigma) * eps)


class DeterministicGeneratorGraph(_Base):
    def forward(self, z: Tensor) -> Tensor:
        return self.to_data(self.model.decoder(z))


class EncoderGraph(_Base):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(self.to_model(x))


class LikelihoodGraph(_Base):
    def forward(self, x: Tensor, eps: Tensor) -> Tensor:
        _, log_w, _, _ = self._importance(self.to_model(x), eps)
        # logsumexp_k - log K, with K counted as a tensor so that K stays dynamic
        return torch.logsumexp(log_w, 0) - torch.log(torch.ones_like(log_w).sum(0)) + self.log_det


class DensityGraph(_Base):
    """Density critic: l(x) in data units."""

    def forward(self, x: Tensor) -> Tensor:
        return self.model.critic(self.to_model(x)).float() + self.log_det


class MarginalCriticGraph(_Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.model.critic(self.to_model(x)).float()


class MarginalDensityGraph(_Base):
    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        d = m.divergence
        xm = self.to_model(x)
        v = m.critic(xm).float()
        _, log_w, _, _ = self._importance(xm, eps)
        ll = torch.logsumexp(log_w, 0) - torch.log(torch.ones_like(log_w).sum(0))
        return v, d.inverse_f_prime_log(d.activation(v)) + ll + self.log_det


class JointCriticGraph(_Base):
    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.model.critic(self.to_model(x), z).float()


class JointDensityGraph(_Base):
    def forward(self, x: Tensor, z: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        d = m.divergence
        xm = self.to_model(x)
        v = m.critic(xm, z).float()
        zk, log_w, zf, xf = self._importance(xm, eps)
        s = d.inverse_f_prime_log(d.activation(m.critic(xf, zf).float())).reshape(eps.shape[0], -1)
        return v, (s + log_w).mean(0) + self.log_det


# --------------------------------------------------------------------------- graph specs
@dataclass
class GraphSpec:
    """One graph to export: its module, named inputs with symbolic shapes, outputs, reference."""

    role: str
    module: nn.Module
    inputs: list[tuple[str, list[Any]]]  # (name, shape with "batch"/"k" for dynamic dims)
    outputs: list[tuple[str, list[Any]]]
    reference: Any  # callable(ref model, **inputs as tensors) -> tuple of tensors (the model's own methods)
    doc: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    exporter: str = ""


def _has_log_density(model: FGMModel) -> bool:
    return model.generator == "gaussian" and bool(getattr(model.divergence, "strictly_convex", True))


def _real(t: Tensor) -> Tensor:
    """A critic value as float32, or float64 when the reference runs in float64."""
    return t if t.dtype == torch.float64 else t.float()


def graph_specs(run: Any, model: FGMModel) -> list[GraphSpec]:
    """The graphs of a run: export modules on ``model``; references take the model to use."""
    info = run.info
    shape = [int(s) for s in info.shape]
    d = int(model.latent_dim)
    sc = info.scaling
    dims = info.dims
    log_det = sc.log_det(dims)
    args = (model, sc.shift, sc.scale, dims)

    def tm(x: Tensor) -> Tensor:
        return sc.to_model(x)

    x_in = ("x", [BATCH, *shape])
    z_in = ("z", [BATCH, d])
    keps_in = ("eps", [K, BATCH, d])
    vec = [BATCH]
    specs: list[GraphSpec] = []

    if model.generator == "gaussian":
        specs.append(
            GraphSpec(
                "generator",
                GeneratorGraph(*args),
                [z_in, ("eps", [BATCH, *shape])],
                [("x", [BATCH, *shape])],
                lambda r, z, eps: (sc.to_data(r.generate(z, eps)),),
                "x = to_data(mean(z) + sigma * eps): one sample per row of z and eps",
            )
        )
    else:
        specs.append(
            GraphSpec(
                "generator",
                DeterministicGeneratorGraph(*args),
                [z_in],
                [("x", [BATCH, *shape])],
                lambda r, z: (sc.to_data(r.generate(z, None)),),
                "x = to_data(G(z))",
            )
        )

    specs.append(
        GraphSpec(
            "encoder",
            EncoderGraph(*args),
            [x_in],
            [("mu", [BATCH, d]), ("logvar", [BATCH, d])],
            lambda r, x: tuple(r.encode(tm(x))),
            "q(z|x) = N(mu, exp(logvar))",
        )
    )

    form = model.critic_form
    if form == "density":
        if model.density_estimator:  # n_critic = 0 (plain VAE): no estimator to export
            specs.append(
                GraphSpec(
                    "density",
                    DensityGraph(*args),
                    [x_in],
                    [("log_density", vec)],
                    lambda r, x: (r.log_density(tm(x)) + log_det,),
                    "log p_D(x) from the density estimator, nats, data units",
                )
            )
    elif form == "marginal":
        if _has_log_density(model):
            specs.append(
                GraphSpec(
                    "density",
                    MarginalDensityGraph(*args),
                    [x_in, keps_in],
                    [("critic", vec), ("log_density", vec)],
                    lambda r, x, eps: (_real(r.critic(tm(x))), r.log_density(tm(x), eps) + log_det),
                    "critic: raw V(x); log_density: log (f')^-1(g_f(V(x))) + log p(x), K encoder draws",
                )
            )
        else:
            specs.append(
                GraphSpec(
                    "density",
                    MarginalCriticGraph(*args),
                    [x_in],
                    [("critic", vec)],
                    lambda r, x: (_real(r.critic(tm(x))),),
                    "critic: raw V(x)",
                )
            )
    else:  # joint
        if _has_log_density(model):
            specs.append(
                GraphSpec(
                    "density",
                    JointDensityGraph(*args),
                    [x_in, z_in, keps_in],
                    [("critic", vec), ("log_density", vec)],
                    lambda r, x, z, eps: (_real(r.critic(tm(x), z)), r.log_density(tm(x), eps) + log_det),
                    "critic: raw V(x, z); log_density: mean over K encoder draws of the section-4 estimate",
                )
            )
        else:
            specs.append(
                GraphSpec(
                    "density",
                    JointCriticGraph(*args),
                    [x_in, z_in],
                    [("critic", vec)],
                    lambda r, x, z: (_real(r.critic(tm(x), z)),),
                    "critic: raw V(x, z)",
                )
            )

    if model.generator == "gaussian":
        specs.append(
            GraphSpec(
                "likelihood",
                LikelihoodGraph(*args),
                [x_in, keps_in],
                [("log_likelihood", vec)],
                lambda r, x, eps: (r.log_likelihood(tm(x), eps) + log_det,),
                "importance-sampled log p(x), nats, data units; eps: K standard normal draws per row",
            )
        )
    return specs


# --------------------------------------------------------------------------- the export copy
def export_copies(run: Any) -> tuple[FGMModel, FGMModel]:
    """(export model, reference model): CPU copies in eval mode; the run is not touched.

    The export model's networks went through the architecture's ``prepare_export`` (for
    example spectral normalisation baked into plain weights).
    """
    from fgm_core.plugins import get_plugins

    src = run.model
    name = run.config.model.architecture
    arch = get_plugins().get("architectures", name).factory()
    own = copy.deepcopy(Networks(src.encoder, src.decoder, src.critic))
    for net in (own.encoder, own.decoder, own.critic):
        unshare_parametrized_classes(net)
    try:
        nets = arch.prepare_export(own)
    except FGMError:
        raise
    except Exception as e:  # noqa: BLE001
        raise FGMError(
            f"architecture {name!r} failed to prepare its networks for export: {type(e).__name__}: {e}",
            "report it to the architecture plugin's author",
        ) from e
    memo = {id(src.encoder): nets.encoder, id(src.decoder): nets.decoder, id(src.critic): nets.critic}
    model = copy.deepcopy(src, memo).cpu().eval()
    ref = copy.deepcopy(src).cpu().eval()
    for m in (model, ref):
        for p in m.parameters():
            p.requires_grad_(False)
    return model, ref


# --------------------------------------------------------------------------- inputs for parity
def _inputs(spec: GraphSpec, batch: int, k: int, model: FGMModel, sc: Any, g: torch.Generator) -> dict[str, Tensor]:
    """Realistic inputs: x drawn from the model itself (data units, z from its prior), z and eps
    standard normal."""
    d = model.latent_dim
    feeds: dict[str, Tensor] = {}
    for name, shape in spec.inputs:
        if name == "x":
            with torch.no_grad():
                u = torch.rand(batch, generator=g) if model.prior.needs_uniform else None
                z = model.prior.sample(torch.randn(batch, d, generator=g), u)
                eps = torch.randn(batch, *model.data_shape, generator=g)
                feeds[name] = sc.to_data(model.generate(z, eps)).float()
        else:
            concrete = [batch if s == BATCH else k if s == K else int(s) for s in shape]
            feeds[name] = torch.randn(*concrete, generator=g)
    return feeds


# --------------------------------------------------------------------------- exporting one graph
@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and log lines (errors still raise)."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch._dynamo",
            "torch.export",
            "torch.fx",
            "onnxscript",
            "torch._export",
            "torch.onnx._internal",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _torch_export(spec: GraphSpec, example: dict[str, Tensor], path: Path, opset: int, exporter: str) -> None:
    names_in = [n for n, _ in spec.inputs]
    names_out = [n for n, _ in spec.outputs]
    args = tuple(example[n] for n in names_in)
    if exporter == "dynamo":
        from torch.export import Dim

        dims = {BATCH: Dim(BATCH, min=1), K: Dim(K, min=1)}
        dynamic = {n: {i: dims[s] for i, s in enumerate(shape) if s in dims} for n, shape in spec.inputs}
        prog = torch.onnx.export(
            spec.module,
            args,
            None,
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        if prog is None:  # dynamo=True always returns the program
            raise FGMError("torch.onnx.export returned no ONNX program", "update torch")
        prog.save(str(path), external_data=False)
    else:
        axes = {n: {i: s for i, s in enumerate(shape) if s in (BATCH, K)} for n, shape in spec.inputs + spec.outputs}
        torch.onnx.export(
            spec.module,
            args,
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def _fix_io(model_proto: Any, spec: GraphSpec) -> None:
    """Name the dynamic dimensions ``batch``/``k`` and check that no dynamic one got baked in."""
    for values, declared in ((model_proto.graph.input, spec.inputs), (model_proto.graph.output, spec.outputs)):
        by_name = {v.name: v for v in values}
        if [v.name for v in values] != [n for n, _ in declared]:
            raise FGMError(
                f"{spec.role} graph has inputs/outputs {[v.name for v in values]}, expected {[n for n, _ in declared]}",
                "report this as an fgm exporter bug",
            )
        for name, shape in declared:
            dims = by_name[name].type.tensor_type.shape.dim
            if len(dims) != len(shape):
                raise FGMError(
                    f"{spec.role} graph: {name} has rank {len(dims)}, expected {len(shape)}",
                    "report this as an fgm exporter bug",
                )
            for dim, want in zip(dims, shape):
                if isinstance(want, str):
                    if dim.HasField("dim_value"):
                        raise FGMError(
                            f"{spec.role} graph: the {want} dimension of {name} was exported as the "
                            f"constant {dim.dim_value}",
                            "the network branches on the batch size; "
                            "make it shape-agnostic (reshape(-1, ...), no Python arithmetic on shapes)",
                        )
                    dim.dim_param = want
                elif dim.HasField("dim_value") and dim.dim_value != want:
                    raise FGMError(
                        f"{spec.role} graph: {name} has size {dim.dim_value} where {want} was expected",
                        "report this as an fgm exporter bug",
                    )
                else:
                    dim.dim_value = int(want)


def divergence_entry(run: Any, model: FGMModel) -> dict[str, Any]:
    """The divergence as exports record it: its ``describe()``, the configured ``params`` and
    ``spec``, the name with its parameters as ``fgm train -d`` takes it (``alpha:0.5``)."""
    from fgm_core.divspec import config_label
    from fgm_core.plugins import get_plugins

    return {
        **model.divergence.describe(),
        "params": dict(run.config.divergence.params),
        "spec": config_label(run.config, get_plugins()),
    }


def metadata(run: Any, model: FGMModel, role: str, opset: int) -> dict[str, str]:
    """The ``fgm.*`` metadata every graph carries (values are strings; structures are JSON)."""
    from fgm_core import __version__

    info = run.info
    return {
        "fgm.format_version": str(FORMAT_VERSION),
        "fgm.fgm_version": __version__,
        "fgm.role": role,
        "fgm.divergence": json.dumps(divergence_entry(run, model)),
        "fgm.critic": model.critic_form,
        "fgm.generator": model.generator,
        "fgm.latent_dim": str(int(model.latent_dim)),
        "fgm.data_shape": json.dumps([int(s) for s in info.shape]),
        "fgm.data_kind": info.kind,
        "fgm.scaling": json.dumps({"shift": info.scaling.shift, "scale": info.scaling.scale}),
        "fgm.config": json.dumps(run.config.to_dict()),
        "fgm.plugins": json.dumps(run.plugins),
        "fgm.opset": str(opset),
    }


def float64_copy(ref: FGMModel) -> FGMModel | None:
    """A float64 copy of the reference model (None when its networks cannot be converted)."""
    try:
        return copy.deepcopy(ref).double()
    except Exception:  # noqa: BLE001 - a plugin's network that only exists in float32
        return None


@dataclass
class Tolerance:
    """The parity rule for every output: ``|onnx - ref64| <= atol + rtol * |ref64| + factor * e32``,
    where ``e32`` is PyTorch float32's own worst error on that output against the float64
    reference (its conditioning), measured on the same inputs. ``override``: atol/rtol came
    from the user (``fgm export --atol/--rtol``)."""

    atol: float = ATOL
    rtol: float = RTOL
    factor: float = PARITY_FACTOR
    override: bool = False

    def as_dict(self, reference: str) -> dict[str, Any]:
        return {
            "rule": "|onnx - reference| <= atol + rtol * |reference| + factor * torch_float32_error",
            "atol": self.atol,
            "rtol": self.rtol,
            "factor": self.factor,
            "override": self.override,
            "reference": reference,
        }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[finite].astype(np.float64) - b[finite]).max()) if finite.any() else 0.0


def _parity(
    spec: GraphSpec, path: Path, model: FGMModel, ref: FGMModel, ref64: FGMModel | None, sc: Any, tol: Tolerance
) -> bool:
    """Run the saved graph with onnxruntime (CPU) at several batch sizes and judge every output
    against a float64 evaluation of the model (see :class:`Tolerance`). Fills ``spec.max_abs_diff``
    (onnx against PyTorch float32) and ``spec.parity``; returns whether the float64 reference
    was used (else PyTorch float32 is the reference and its own error counts as 0)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1234)
    cases = []
    for batch, k in zip(PARITY_BATCHES, PARITY_K):
        feeds = _inputs(spec, batch, k, model, sc, g)
        with torch.no_grad():
            t32 = [t.detach().float().numpy() for t in spec.reference(ref, **feeds)]
            t64 = None
            if ref64 is not None:
                try:
                    t64 = [
                        t.detach().double().numpy()
                        for t in spec.reference(ref64, **{n: v.double() for n, v in feeds.items()})
                    ]
                except Exception:  # noqa: BLE001 - some operator has no float64 kernel: judge in float32
                    ref64 = None
        got = sess.run(None, {n: t.numpy() for n, t in feeds.items()})
        cases.append((batch, t32, t64, got))
    use64 = ref64 is not None
    for i, (name, _) in enumerate(spec.outputs):
        e32 = max(_max_abs(c[1][i], c[2][i]) for c in cases if c[2] is not None) if use64 else 0.0
        allowed = tol.atol + tol.factor * e32
        worst = worst_ref = 0.0
        for batch, t32, t64, got in cases:
            e, o = (t64 if use64 and t64 is not None else t32)[i], got[i]
            if e.shape != o.shape:
                raise FGMError(
                    f"ONNX parity failed: {spec.role} output {name!r} has shape {o.shape} at batch {batch}, "
                    f"PyTorch gives {e.shape}",
                    "report this as an fgm exporter bug",
                )
            diff = _max_abs(e, o)
            worst, worst_ref = max(worst, _max_abs(t32[i], o)), max(worst_ref, diff)
            ok = np.isclose(o, e, atol=allowed, rtol=tol.rtol, equal_nan=True)
            if not ok.all():
                raise FGMError(
                    f"ONNX parity failed: {spec.role} output {name!r} differs from the "
                    f"{'float64' if use64 else 'float32'} PyTorch reference at batch {batch} (max |diff| {diff:.3g}, "
                    f"{int((~ok).sum())} of {ok.size} values outside {tol.atol:g} + {tol.rtol:g} * |ref| + "
                    f"{tol.factor:g} x {e32:.3g}, PyTorch float32's own error)",
                    "an operator exports incorrectly: try --exporter dynamo or another --opset; for a model this "
                    "ill-conditioned on purpose, --atol/--rtol set the tolerance (recorded in the manifest)",
                )
        spec.max_abs_diff[name] = worst
        spec.parity[name] = {"onnx_error": worst_ref, "torch_float32_error": e32, "atol_used": allowed}
    return use64


def export_graph(
    spec: GraphSpec,
    run: Any,
    model: FGMModel,
    path: Path,
    opset: int,
    exporter: str,
    ref: FGMModel | None = None,
    ref64: FGMModel | None = None,
    tol: Tolerance | None = None,
) -> bool:
    """Export, annotate, save as one self-contained file, check, and verify parity.

    ``exporter="auto"``: torch's TorchScript-based exporter (a second or two per graph), and
    its dynamo exporter when that one fails or its graph fails the checks. Sets
    ``spec.exporter``; returns whether parity used the float64 reference.
    """
    ref = model if ref is None else ref
    tol = tol or Tolerance()

    def attempt(name: str) -> bool:
        _export_checked(spec, run, model, path, opset, name)
        spec.exporter = name
        return _parity(spec, path, model, ref, ref64, run.info.scaling, tol)

    if exporter == "auto":
        try:
            return attempt("torchscript")
        except FGMError:  # an operator it lacks, or a graph that fails the checks: dynamo decides
            pass
        exporter = "dynamo"
    return attempt(exporter)


def _export_checked(spec: GraphSpec, run: Any, model: FGMModel, path: Path, opset: int, exporter: str) -> None:
    """Export one graph with one torch exporter, annotate it, save it and run the ONNX checker."""
    import onnx

    sc = run.info.scaling
    example = _inputs(spec, 3, 2, model, sc, torch.Generator().manual_seed(0))
    raw = path.with_name(f".{path.stem}.raw.onnx")
    try:
        with _quiet():
            _torch_export(spec, example, raw, opset, exporter)
    except FGMError:
        raise
    except Exception as e:  # noqa: BLE001
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FGMError(
            f"ONNX export of the {spec.role} graph failed (opset {opset}, {exporter} exporter): "
            f"{type(e).__name__}: {first}",
            "try another --opset or exporter, or rerun with --debug",
        ) from e
    proto = onnx.load(str(raw))  # loads external data, if any, back into the model
    for extra in raw.parent.glob(f"{raw.name}*"):
        extra.unlink()
    got = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if got.get("ai.onnx") != opset:
        raise FGMError(
            f"the {spec.role} graph came out with opset {got.get('ai.onnx')}, not {opset}",
            "choose an opset the installed torch exporter supports (18 or newer for dynamo)",
        )
    _fix_io(proto, spec)
    del proto.metadata_props[:]
    for key, value in metadata(run, model, spec.role, opset).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"fgm {spec.role} graph: {spec.doc}"
    proto.producer_name = "fgm (" + (proto.producer_name or "torch") + ")"
    onnx.save(proto, str(path), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise FGMError(
            f"the ONNX checker rejected the {spec.role} graph: {str(e).strip().splitlines()[0]}",
            "try another --opset, or report it with the run's config",
        ) from e


# --------------------------------------------------------------------------- the manifest's contract
SCALING_DOC = {
    "inside_graphs": True,
    "meaning": "data = model * scale + shift. Every graph takes and returns data units: the scaling is "
    "inside the graphs, so callers never apply it.",
    "log_det_meaning": "log_det = -dims * log(scale) = log |d model / d data|. It is already added to the "
    "log_likelihood and log_density outputs (densities of data-unit x); subtract it to get "
    "densities in model units.",
}

_IO_DOCS = {
    ("generator", "z"): "latent rows drawn from the prior p(z), the manifest's prior (normal: N(0, I))",
    ("generator", "eps"): "standard normal noise, one per data value: x = to_data(mean(z) + sigma * eps); "
    "zeros give the generator mean",
    ("generator", "x"): "samples in data units (not clipped; see sampling.clip)",
    ("encoder", "x"): "data rows in data units",
    ("encoder", "mu"): "mean of q(z|x), a diagonal Gaussian",
    ("encoder", "logvar"): "log variance of q(z|x)",
    ("likelihood", "x"): "data rows in data units",
    ("likelihood", "eps"): "K standard normal draws per row; inside the graph z_k = mu + exp(logvar / 2) * eps_k",
    ("likelihood", "log_likelihood"): "log p(x) ~ logsumexp_k [log p(z_k) + log p(x|z_k) - log q(z_k|x)] - log K "
    "+ log_det, nats per row (importance sampling with K draws)",
    ("density", "x"): "data rows in data units",
    ("density", "z"): "the latent paired with x for the joint critic V(x, z): it feeds only the critic output; "
    "log_density integrates z out with the K draws of eps (pass zeros when only log_density "
    "is wanted)",
    ("density", "eps"): "K standard normal draws per row for the log_density estimate "
    "(z_k = mu + exp(logvar / 2) * eps_k, mu and logvar from the encoder)",
}


def _io_doc(role: str, name: str, critic: str) -> str:
    if role == "density" and name == "critic":
        return f"the raw critic value V(x{', z' if critic == 'joint' else ''}), no activation applied"
    if role == "density" and name == "log_density":
        if critic == "density":
            return "log p_D(x) = l(x) + log_det from the density estimator, nats per row"
        if critic == "joint":
            return (
                "log p_D(x) ~ mean_k [log r(x, z_k) + log p(z_k) + log p(x|z_k) - log q(z_k|x)] + log_det, "
                "where log r = log (f')^-1(g_f(V)) is the density ratio the critic encodes; nats per row"
            )
        return "log p_D(x) = log (f')^-1(g_f(V(x))) + log p(x) (the likelihood with K draws) + log_det; nats per row"
    return _IO_DOCS.get((role, name), "")


def _io_entry(name: str, shape: list[Any], role: str, critic: str) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32", "doc": _io_doc(role, name, critic)}


def sampling_contract(model: FGMModel, info: Any, clip: bool) -> dict[str, Any]:
    """How to draw the graphs' noise, and the rule ``fgm sample --seed`` and the runtime follow."""
    from fgm_onnx.runtime import SAMPLE_BLOCK, SCORE_BLOCK

    d, shape = int(model.latent_dim), [int(s) for s in info.shape]
    gaussian = model.generator == "gaussian"
    image = info.kind == "image"
    return {
        "prior": prior_contract(model),
        "eps": (
            {
                "distribution": "standard normal, independent per value",
                "shape": ["N", *shape],
                "zeros": "the generator mean (fgm sample --mean)",
            }
            if gaussian
            else None
        ),
        "latent_eps": {
            "distribution": "standard normal",
            "shape": ["K", "N", d],
            "use": "the likelihood and free-critic density graphs: K importance draws per row",
        },
        "rng": "numpy.random.default_rng(seed) (PCG64), standard_normal(..., dtype=float32)",
        "sample_rule": (
            f"rows are drawn in blocks of block_rows = {SAMPLE_BLOCK}: for each block of b rows, in "
            f"order, z = rng.standard_normal((b, {d})) then "
            + (
                f"k = rng.integers({model.prior.describe().get('components')}, size=b) and "
                "z = means[k] + stds[k] * z in float32 (the manifest's prior), then "
                if model.prior.needs_uniform
                else ""
            )
            + (
                f"eps = rng.standard_normal((b, {', '.join(map(str, shape))}))"
                if gaussian
                else "(no eps: the generator is deterministic)"
            )
            + "; --mean draws z only"
        ),
        "score_rule": (
            f"log_likelihood and log_density draw, for each block of b = {SCORE_BLOCK} rows (fewer "
            "at the end), eps = rng.standard_normal((K, b, latent_dim)) from default_rng(seed)"
        ),
        "block_rows": SAMPLE_BLOCK,
        "score_block_rows": SCORE_BLOCK,
        "torch_runs": "a run directory (torch) draws from torch's generator: same distribution, other numbers",
        "clip": (
            {
                "applied_by": "the runtime (fgm sample, OnnxRuntimeModel.sample), not the graph",
                "default": bool(clip),
                "range": list(_data_range(info)),
            }
            if image
            else None
        ),
    }


def prior_contract(model: FGMModel) -> dict[str, Any]:
    """How z is drawn: the prior's own description (``kind`` and parameters, also the manifest's
    top-level ``prior``) and the rule in words."""
    d = int(model.latent_dim)
    desc = model.prior.describe()
    if desc.get("kind") == "mixture":
        rule = (
            f"z = means[k] + stds[k] * e, e standard normal (N, {d}), k uniform on the "
            f"{desc['components']} components (equal weights), float32"
        )
    elif desc.get("kind") == "normal":
        rule = f"standard normal N(0, I), shape (N, {d}), float32"
    else:
        rule = f"the prior {desc.get('kind')!r}: see its plugin; this runtime cannot draw from it"
    return {"z": rule, **desc}


def _data_range(info: Any) -> tuple[float, float]:
    """The data-unit range of image data: model units [-1, 1] mapped through the scaling."""
    sc = info.scaling
    return (float(sc.shift - sc.scale), float(sc.shift + sc.scale))


MEMORY_BUDGET = {"recommended": 256 * 2**20, "maximum": 4 * 2**30}  # bytes of the static bound


def rows_per_call(path: Path, spec: GraphSpec) -> dict[str, Any]:
    """Rows per call from a static count: the bytes of every intermediate tensor for one row
    (one row and one importance draw where the graph takes K), an upper bound since
    onnxruntime reuses buffers (dcgan likelihood, 25,600 units per call: bound 12.5 GB, measured
    peak 6.0 GB). ``recommended``
    keeps that bound at 256 MiB, ``maximum`` at 4 GiB."""
    import onnx

    proto = onnx.load(str(path))
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = 1
    weights = sum(int(np.prod(t.dims)) * 4 for t in proto.graph.initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - no estimate rather than a failed export
        return {"unit": None, "note": "shape inference failed: no estimate"}
    per = 0
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if all(dd.HasField("dim_value") for dd in dims):
            per += int(np.prod([dd.dim_value for dd in dims])) * 4
    per = max(per, 4)
    k = any(s == K for _, shape in spec.inputs for s in shape)
    rec = int(min(65536, max(1, MEMORY_BUDGET["recommended"] // per)))
    return {
        "unit": "row x k" if k else "row",
        "activation_bytes_per_unit": per,
        "weights_bytes": weights,
        "recommended": rec,
        "maximum": int(max(1, MEMORY_BUDGET["maximum"] // per)),
        "memory_estimate_mib_at_recommended": round((weights + rec * per) / 2**20, 1),
        "note": "static upper bound: sum of all intermediate tensors, no buffer reuse",
    }


def export_run(
    run: Any,
    out_dir: Path,
    opset: int | None = None,
    exporter: str = "auto",
    roles: list[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    clip: bool = False,
) -> dict[str, Any]:
    """Export ``run`` into ``out_dir`` (one ``ROLE.onnx`` per role plus ``manifest.json``).

    ``opset``: ONNX opset (default 18). ``exporter``: ``auto`` (torch's TorchScript-based
    exporter, falling back to dynamo per graph when it fails or its graph fails the checks),
    ``torchscript`` or ``dynamo`` (needed for some operators, e.g. expm1; several times
    slower). ``roles``: export only these graphs. ``atol``/``rtol``: replace the parity
    tolerance's floor terms (see :class:`Tolerance`; recorded in the manifest). ``clip``:
    whether the runtime clips image samples to the data range by default (recorded in the manifest;
    the graphs themselves never clip). Raises FGMError when the checker or parity fails.
    """
    from fgm_core import __version__

    t0 = time.perf_counter()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if exporter not in EXPORTERS:
        raise FGMError(f"unknown ONNX exporter {exporter!r}", f"use one of {', '.join(EXPORTERS)}")
    if exporter == "dynamo" and opset < 18:
        raise FGMError(f"opset {opset} is too old for the dynamo exporter", "use --opset 18 or newer")
    if opset < 13 or opset > _max_opset():
        raise FGMError(f"opset {opset} is not supported", f"use an opset from 13 to {_max_opset()}")
    for what, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise FGMError(f"parity {what} must be a finite number >= 0, got {value!r}", f"e.g. --{what} 1e-3")
    tol = Tolerance(
        ATOL if atol is None else float(atol),
        RTOL if rtol is None else float(rtol),
        PARITY_FACTOR,
        override=atol is not None or rtol is not None,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, ref = export_copies(run)
    ref64 = float64_copy(ref)
    specs = graph_specs(run, model)
    if roles is not None:
        unknown = set(roles) - {s.role for s in specs}
        if unknown:
            raise FGMError(
                f"this run has no {sorted(unknown)[0]!r} graph", f"roles: {', '.join(s.role for s in specs)}"
            )
        specs = [s for s in specs if s.role in roles]
    graphs = []
    used64 = True
    for spec in specs:
        path = out_dir / f"{spec.role}.onnx"
        used64 &= export_graph(
            spec,
            run,
            model,
            path,
            opset,
            exporter if opset >= 18 or exporter != "auto" else "torchscript",
            ref,
            ref64,
            tol,
        )
        graphs.append(
            {
                "role": spec.role,
                "file": path.name,
                "inputs": [_io_entry(n, s, spec.role, model.critic_form) for n, s in spec.inputs],
                "outputs": [_io_entry(n, s, spec.role, model.critic_form) for n, s in spec.outputs],
                "max_abs_diff": spec.max_abs_diff,
                "parity": spec.parity,
                "bytes": path.stat().st_size,
                "doc": spec.doc,
                "torch_exporter": spec.exporter,
                "rows_per_call": rows_per_call(path, spec),
            }
        )
    info = run.info
    manifest = {
        "exporter": "onnx",
        "format_version": FORMAT_VERSION,
        "fgm_version": __version__,
        "graphs": graphs,
        "latent_dim": int(model.latent_dim),
        "data_shape": [int(s) for s in info.shape],
        "data": info.to_dict(),
        "scaling": {"shift": info.scaling.shift, "scale": info.scaling.scale, **SCALING_DOC},
        "log_det": info.scaling.log_det(info.dims),
        "divergence": divergence_entry(run, model),
        "critic": model.critic_form,
        "generator": model.generator,
        "prior": model.prior.describe(),
        "sampling": sampling_contract(model, info, clip),
        "opset": opset,
        "torch_exporter": exporter,
        "parity": {
            "batch_sizes": list(PARITY_BATCHES),
            "k": list(PARITY_K),
            **tol.as_dict("float64 PyTorch" if used64 else "float32 PyTorch (the model does not run in float64)"),
            "provider": "CPUExecutionProvider",
        },
        "plugins": run.plugins,
        "config": run.config.to_dict(),
        "run": str(run.path),
        "export_seconds": round(time.perf_counter() - t0, 3),
    }
    tmp = out_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def _max_opset() -> int:
    try:
        import onnx.defs

        return int(onnx.defs.onnx_opset_version())
    except Exception:  # noqa: BLE001
        return 23
