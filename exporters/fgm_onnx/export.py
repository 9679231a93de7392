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
checked against the model's own methods (:class:`fgm_core.model.FGMModel`), the reference.
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

FORMAT_VERSION = 2  # the manifest's format; fgm_onnx.runtime.FORMAT_VERSION reads it
DEFAULT_OPSET = 18
PARITY_BATCHES = (1, 2, 7, 64)
PARITY_K = (1, 3, 5, 4)  # K used with each parity batch size (dynamic K is exercised too)
ATOL = 1e-5
RTOL = 1e-4
EXPORTERS = ("dynamo", "torchscript")
LOG_2PI = math.log(2 * math.pi)
BATCH, K = "batch", "k"


# --------------------------------------------------------------------------- export-friendly math
def _normal_logp(v: Tensor, dims: int) -> Tensor:
    """Standard normal log density summed over the last ``dims`` dimensions."""
    out = -0.5 * (LOG_2PI + v * v)
    return out.flatten(out.dim() - dims).sum(-1) if dims > 1 else out.sum(-1)


def _gauss_logp(x: Tensor, mean: Tensor, log_std: Tensor, dims: int) -> Tensor:
    """Diagonal Gaussian log density summed over the last ``dims`` dimensions (as FGMModel)."""
    r = (x - mean) * torch.exp(-log_std)
    out = -0.5 * (LOG_2PI + r * r) - log_std
    return out.flatten(out.dim() - dims).sum(-1) if dims > 1 else out.sum(-1)


class _Base(nn.Module):
    """Holds the export copy of the model and the data scaling as constants."""

    def __init__(self, model: nn.Module, shift: float, scale: float, dims: int) -> None:
        super().__init__()
        self.model = model
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
        log_w = _normal_logp(z, 1) + log_px - log_q
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
    reference: Any  # callable(**inputs as tensors) -> tuple of tensors (model's own methods)
    doc: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def _has_log_density(model: nn.Module) -> bool:
    return model.generator == "gaussian" and bool(getattr(model.divergence, "strictly_convex", True))


def graph_specs(run: Any, model: nn.Module, ref: nn.Module) -> list[GraphSpec]:
    """The graphs of a run: export modules on ``model``, references on ``ref`` (both CPU)."""
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
        specs.append(GraphSpec(
            "generator", GeneratorGraph(*args), [z_in, ("eps", [BATCH, *shape])], [("x", [BATCH, *shape])],
            lambda z, eps: (sc.to_data(ref.generate(z, eps)),),
            "x = to_data(mean(z) + sigma * eps): one sample per row of z and eps"))
    else:
        specs.append(GraphSpec(
            "generator", DeterministicGeneratorGraph(*args), [z_in], [("x", [BATCH, *shape])],
            lambda z: (sc.to_data(ref.generate(z, None)),), "x = to_data(G(z))"))

    specs.append(GraphSpec(
        "encoder", EncoderGraph(*args), [x_in], [("mu", [BATCH, d]), ("logvar", [BATCH, d])],
        lambda x: tuple(ref.encode(tm(x))), "q(z|x) = N(mu, exp(logvar))"))

    form = model.critic_form
    if form == "density":
        if model.density_estimator:  # n_critic = 0 (plain VAE): no estimator to export
            specs.append(GraphSpec(
                "density", DensityGraph(*args), [x_in], [("log_density", vec)],
                lambda x: (ref.log_density(tm(x)) + log_det,),
                "log p_D(x) from the density estimator, nats, data units"))
    elif form == "marginal":
        if _has_log_density(model):
            specs.append(GraphSpec(
                "density", MarginalDensityGraph(*args), [x_in, keps_in], [("critic", vec), ("log_density", vec)],
                lambda x, eps: (ref.critic(tm(x)).float(), ref.log_density(tm(x), eps) + log_det),
                "critic: raw V(x); log_density: log (f')^-1(g_f(V(x))) + log p(x), K encoder draws"))
        else:
            specs.append(GraphSpec(
                "density", MarginalCriticGraph(*args), [x_in], [("critic", vec)],
                lambda x: (ref.critic(tm(x)).float(),), "critic: raw V(x)"))
    else:  # joint
        if _has_log_density(model):
            specs.append(GraphSpec(
                "density", JointDensityGraph(*args), [x_in, z_in, keps_in], [("critic", vec), ("log_density", vec)],
                lambda x, z, eps: (ref.critic(tm(x), z).float(), ref.log_density(tm(x), eps) + log_det),
                "critic: raw V(x, z); log_density: mean over K encoder draws of the section-4 estimate"))
        else:
            specs.append(GraphSpec(
                "density", JointCriticGraph(*args), [x_in, z_in], [("critic", vec)],
                lambda x, z: (ref.critic(tm(x), z).float(),), "critic: raw V(x, z)"))

    if model.generator == "gaussian":
        specs.append(GraphSpec(
            "likelihood", LikelihoodGraph(*args), [x_in, keps_in], [("log_likelihood", vec)],
            lambda x, eps: (ref.log_likelihood(tm(x), eps) + log_det,),
            "importance-sampled log p(x), nats, data units; eps: K standard normal draws per row"))
    return specs


# --------------------------------------------------------------------------- the export copy
def export_copies(run: Any) -> tuple[nn.Module, nn.Module]:
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
        raise FGMError(f"architecture {name!r} failed to prepare its networks for export: {type(e).__name__}: {e}",
                       "report it to the architecture plugin's author") from e
    memo = {id(src.encoder): nets.encoder, id(src.decoder): nets.decoder, id(src.critic): nets.critic}
    model = copy.deepcopy(src, memo).cpu().eval()
    ref = copy.deepcopy(src).cpu().eval()
    for m in (model, ref):
        for p in m.parameters():
            p.requires_grad_(False)
    return model, ref


# --------------------------------------------------------------------------- inputs for parity
def _inputs(spec: GraphSpec, batch: int, k: int, model: nn.Module, sc: Any, g: torch.Generator) -> dict[str, Tensor]:
    """Realistic inputs: x drawn from the model itself (data units), z and eps standard normal."""
    d = model.latent_dim
    feeds: dict[str, Tensor] = {}
    for name, shape in spec.inputs:
        if name == "x":
            with torch.no_grad():
                z = torch.randn(batch, d, generator=g)
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
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx",
                                              "onnxscript", "torch._export", "torch.onnx._internal")]
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
        prog = torch.onnx.export(spec.module, args, None, input_names=names_in, output_names=names_out,
                                 dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False,
                                 verbose=False)
        prog.save(str(path), external_data=False)
    else:
        axes = {n: {i: s for i, s in enumerate(shape) if s in (BATCH, K)} for n, shape in spec.inputs + spec.outputs}
        torch.onnx.export(spec.module, args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def _fix_io(model_proto: Any, spec: GraphSpec) -> None:
    """Name the dynamic dimensions ``batch``/``k`` and check that no dynamic one got baked in."""
    for values, declared in ((model_proto.graph.input, spec.inputs), (model_proto.graph.output, spec.outputs)):
        by_name = {v.name: v for v in values}
        if [v.name for v in values] != [n for n, _ in declared]:
            raise FGMError(f"{spec.role} graph has inputs/outputs {[v.name for v in values]}, expected "
                           f"{[n for n, _ in declared]}", "report this as an fgm exporter bug")
        for name, shape in declared:
            dims = by_name[name].type.tensor_type.shape.dim
            if len(dims) != len(shape):
                raise FGMError(f"{spec.role} graph: {name} has rank {len(dims)}, expected {len(shape)}",
                               "report this as an fgm exporter bug")
            for dim, want in zip(dims, shape):
                if isinstance(want, str):
                    if dim.HasField("dim_value"):
                        raise FGMError(f"{spec.role} graph: the {want} dimension of {name} was exported as the "
                                       f"constant {dim.dim_value}", "the network branches on the batch size; "
                                       "make it shape-agnostic (reshape(-1, ...), no Python arithmetic on shapes)")
                    dim.dim_param = want
                elif dim.HasField("dim_value") and dim.dim_value != want:
                    raise FGMError(f"{spec.role} graph: {name} has size {dim.dim_value} where {want} was expected",
                                   "report this as an fgm exporter bug")
                else:
                    dim.dim_value = int(want)


def divergence_entry(run: Any, model: nn.Module) -> dict[str, Any]:
    """The divergence as exports record it: its ``describe()``, the configured ``params`` and
    ``spec``, the name with its parameters as ``fgm train -d`` takes it (``alpha:0.5``)."""
    from fgm_core.divspec import config_label
    from fgm_core.plugins import get_plugins

    return {**model.divergence.describe(), "params": dict(run.config.divergence.params),
            "spec": config_label(run.config, get_plugins())}


def metadata(run: Any, model: nn.Module, role: str, opset: int) -> dict[str, str]:
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


def _parity(spec: GraphSpec, path: Path, model: nn.Module, sc: Any) -> dict[str, float]:
    """Run the saved graph with onnxruntime (CPU) against the reference at several batch sizes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1234)
    worst = {n: 0.0 for n, _ in spec.outputs}
    # samples are in data units: the tolerance holds in model units, so scale atol with the
    # data (pixels 0..255 carry float32 rounding of ~1e-5 * 127.5 near 0)
    atol = ATOL * max(1.0, abs(float(sc.scale))) if spec.role == "generator" else ATOL
    for batch, k in zip(PARITY_BATCHES, PARITY_K):
        feeds = _inputs(spec, batch, k, model, sc, g)
        with torch.no_grad():
            expected = [t.detach().cpu().numpy() for t in spec.reference(**feeds)]
        got = sess.run(None, {n: t.numpy() for n, t in feeds.items()})
        for (name, _), e, o in zip(spec.outputs, expected, got):
            if e.shape != o.shape:
                raise FGMError(f"ONNX parity failed: {spec.role} output {name!r} has shape {o.shape} at batch {batch}, "
                               f"PyTorch gives {e.shape}", "report this as an fgm exporter bug")
            finite = np.isfinite(e) & np.isfinite(o)
            diff = float(np.abs(e[finite].astype(np.float64) - o[finite]).max()) if finite.any() else 0.0
            ok = np.isclose(o, e, atol=atol, rtol=RTOL, equal_nan=True)
            worst[name] = max(worst[name], diff)
            if not ok.all():
                raise FGMError(
                    f"ONNX parity failed: {spec.role} output {name!r} differs from PyTorch at batch {batch} "
                    f"(max |diff| {diff:.3g}, {int((~ok).sum())} of {ok.size} values outside atol {atol:g}, "
                    f"rtol {RTOL:g})",
                    "an operator exports incorrectly; try another --opset, or report it with the run's config")
    return worst


def export_graph(spec: GraphSpec, run: Any, model: nn.Module, path: Path, opset: int, exporter: str) -> None:
    """Export, annotate, save as one self-contained file, check, and verify parity."""
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
        raise FGMError(f"ONNX export of the {spec.role} graph failed (opset {opset}, {exporter} exporter): "
                       f"{type(e).__name__}: {first}", "try another --opset or exporter, or rerun with --debug") from e
    proto = onnx.load(str(raw))  # loads external data, if any, back into the model
    for extra in raw.parent.glob(f"{raw.name}*"):
        extra.unlink()
    got = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if got.get("ai.onnx") != opset:
        raise FGMError(f"the {spec.role} graph came out with opset {got.get('ai.onnx')}, not {opset}",
                       "choose an opset the installed torch exporter supports (18 or newer for dynamo)")
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
        raise FGMError(f"the ONNX checker rejected the {spec.role} graph: {str(e).strip().splitlines()[0]}",
                       "try another --opset, or report it with the run's config") from e
    spec.max_abs_diff = _parity(spec, path, model, sc)


# --------------------------------------------------------------------------- the whole export
def _io_entry(name: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32"}


def export_run(run: Any, out_dir: Path, opset: int | None = None, exporter: str = "dynamo",
               roles: list[str] | None = None) -> dict[str, Any]:
    """Export ``run`` into ``out_dir`` (one ``ROLE.onnx`` per role plus ``manifest.json``).

    ``opset``: ONNX opset (default 18). ``exporter``: ``dynamo`` (torch's default, needed
    for some operators, e.g. expm1) or the legacy ``torchscript`` exporter (faster, fewer
    operators). ``roles``: export only these graphs. Raises FGMError when the checker or
    the parity check fails.
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, ref = export_copies(run)
    specs = graph_specs(run, model, ref)
    if roles is not None:
        unknown = set(roles) - {s.role for s in specs}
        if unknown:
            raise FGMError(f"this run has no {sorted(unknown)[0]!r} graph", f"roles: {', '.join(s.role for s in specs)}")
        specs = [s for s in specs if s.role in roles]
    graphs = []
    for spec in specs:
        path = out_dir / f"{spec.role}.onnx"
        export_graph(spec, run, model, path, opset, exporter)
        graphs.append({
            "role": spec.role,
            "file": path.name,
            "inputs": [_io_entry(n, s) for n, s in spec.inputs],
            "outputs": [_io_entry(n, s) for n, s in spec.outputs],
            "max_abs_diff": spec.max_abs_diff,
            "bytes": path.stat().st_size,
            "doc": spec.doc,
        })
    info = run.info
    manifest = {
        "exporter": "onnx",
        "format_version": FORMAT_VERSION,
        "fgm_version": __version__,
        "graphs": graphs,
        "latent_dim": int(model.latent_dim),
        "data_shape": [int(s) for s in info.shape],
        "data": info.to_dict(),
        "scaling": {"shift": info.scaling.shift, "scale": info.scaling.scale},
        "log_det": info.scaling.log_det(info.dims),
        "divergence": divergence_entry(run, model),
        "critic": model.critic_form,
        "generator": model.generator,
        "opset": opset,
        "torch_exporter": exporter,
        "parity": {"batch_sizes": list(PARITY_BATCHES), "atol": ATOL, "rtol": RTOL, "provider": "CPUExecutionProvider"},
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
