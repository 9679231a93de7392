"""Run an fgm ONNX export with numpy and onnxruntime only (no torch, no fgm_core).

    from fgm_onnx.runtime import OnnxRuntimeModel
    m = OnnxRuntimeModel("export/", device="auto")   # CUDA when it really runs, else CPU
    x = m.sample(1000, seed=0)                        # (1000, *data_shape), data units
    mu, logvar = m.encode(x)
    ll = m.log_likelihood(x, k=100)                   # nats per row
    ld = m.log_density(x)                             # the density estimator's log p_D(x)

The methods mirror :class:`fgm_core.run.Run` (data units in and out) and return numpy
arrays. Noise is drawn here with ``numpy.random.default_rng(seed)`` (or passed in: ``z``,
``eps``) and fed to the graphs. Every problem the caller can fix raises
:class:`FGMRuntimeError` (bad input: :class:`RuntimeInputError`, also a ``ValueError``) with a
one-line message and a hint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FORMAT_VERSION = 2  # 2: manifest.json records the sha256 of every file ("files")
SAMPLE_BLOCK = 4096  # rows of noise drawn at once by sample(): part of the seed rule (manifest "sampling")
SCORE_BLOCK = 512  # rows per eps draw in log_likelihood / log_density: part of the seed rule too
DEFAULT_ROWS = 1024  # rows (or rows x K) per call when an older manifest gives no rows_per_call
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ROLES = ("generator", "encoder", "density", "likelihood")


class FGMRuntimeError(Exception):
    """A problem with an export or with how it is used; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class RuntimeInputError(FGMRuntimeError, ValueError):
    """Input data the graphs cannot take: wrong shape or dtype, NaN/inf, empty."""


@dataclass(frozen=True)
class ExportInfo:
    """What the export knows about its data (like ``Run.info``)."""

    dataset: str
    shape: tuple[int, ...]
    kind: str
    shift: float
    scale: float
    label_names: list[str] | None = None
    mixture: dict[str, list] | None = None

    @property
    def dims(self) -> int:
        return int(np.prod(self.shape))

    @property
    def scaling(self) -> dict[str, float]:
        return {"shift": self.shift, "scale": self.scale}


@dataclass(frozen=True)
class LatentPrior:
    """The export's p(z) from the manifest's ``prior`` (an older export without it: N(0, I)):
    ``normal``, or ``mixture`` with ``means`` and ``stds`` (K, latent_dim) and equal weights."""

    kind: str
    means: np.ndarray | None = None
    stds: np.ndarray | None = None

    @classmethod
    def from_manifest(cls, entry: Any, latent_dim: int) -> LatentPrior:
        if entry is None:
            return cls("normal")
        kind = str(entry["kind"])
        if kind != "mixture":
            return cls(kind)
        means = np.asarray(entry["means"], dtype=np.float32)
        stds = np.asarray(entry["stds"], dtype=np.float32)
        if means.ndim != 2 or means.shape[1] != latent_dim or stds.shape != means.shape or means.shape[0] < 1:
            raise ValueError(f"prior means/stds of shapes {means.shape}/{stds.shape}, latent_dim {latent_dim}")
        if not (np.isfinite(means).all() and np.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError("prior means/stds must be finite, stds positive")
        return cls(kind, means, stds)

    def draw(self, rng: np.random.Generator, b: int, d: int) -> np.ndarray:
        """b rows of z: e = rng.standard_normal((b, d)), then for a mixture k =
        rng.integers(K, size=b) and z = means[k] + stds[k] * e (the manifest's sample_rule)."""
        if self.kind not in ("normal", "mixture"):
            raise FGMRuntimeError(
                f"this export's latent prior {self.kind!r} is not one this runtime can draw from",
                "pass z (N, latent_dim) drawn from that prior",
            )
        e = rng.standard_normal((b, d), dtype=np.float32)
        if self.means is None or self.stds is None:
            return e
        k = rng.integers(self.means.shape[0], size=b)
        return self.means[k] + self.stds[k] * e


@dataclass
class _Graph:
    role: str
    path: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    sha256: str = ""
    session: Any = None
    meta: dict[str, str] = field(default_factory=dict)
    rows: int = DEFAULT_ROWS  # rows (rows x K) per call: the manifest's recommendation


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _capture_stderr():
    """Capture what native code writes to file descriptor 2 (onnxruntime's provider errors)."""
    buf: list[str] = []
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # no usable stderr: nothing to capture
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), fd)
            yield buf
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            buf.append(tmp.read().decode("utf-8", "replace"))


def _first_error(log: str) -> str:
    """The gist of onnxruntime's log about a provider that did not start."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    for line in text.splitlines():
        if "Failed" in line or "Require" in line or "error" in line.lower():
            line = line.split("]", 2)[-1].strip() if "]" in line else line.strip()
            line = re.sub(r"^[:\s\d]*FAIL\s*:\s*", "", line)
            return line.split("with error: ", 1)[-1][:120]  # e.g. "libcublasLt.so.13: cannot open shared ..."
    return "no reason given"


def _parse_device(device: str) -> tuple[str, int]:
    d = str(device).strip().lower()
    if d in ("auto", "cpu", "cuda"):
        return d, 0
    if d.startswith("cuda:") and d[5:].isascii() and d[5:].isdigit():
        return "cuda", int(d[5:])
    raise FGMRuntimeError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")


def _positive_int(value: Any, what: str, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise RuntimeInputError(f"{what} must be a positive integer, got {value!r}", f"use {flag} 1 or more")
    return int(value)


# --------------------------------------------------------------------------- the runtime
class OnnxRuntimeModel:
    """An fgm ONNX export directory, ready for inference (see the module docstring).

    ``device``: ``auto`` (CUDA when onnxruntime really runs the graphs on it, else CPU; the
    choice is in :attr:`provider` and :attr:`device_message`), ``cpu``, ``cuda`` or
    ``cuda:N`` (an error unless the CUDA execution provider is the one running).
    ``threads`` sets onnxruntime's intra-op threads (its default: one per core); ``spinning=False``
    stops idle worker threads from spinning (fairer for benchmarks, kinder to shared machines).
    ``rows_per_call`` caps the rows (rows x K for the graphs that take K draws) of every graph
    call; by default each graph's ``rows_per_call.recommended`` from the manifest, so memory
    stays bounded whatever the batch. ``clip``: clip image samples to the data range (default:
    the manifest's ``sampling.clip.default``).
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        spinning: bool = True,
        rows_per_call: int | None = None,
        clip: bool | None = None,
    ) -> None:
        self.path = Path(export_dir)
        self.device, self.device_id = _parse_device(device)
        if threads is not None:
            _positive_int(threads, "threads", "--threads")
        if rows_per_call is not None:
            _positive_int(rows_per_call, "rows_per_call", "--rows-per-call")
        self.threads = threads
        self.rows_per_call = rows_per_call
        self.clip = clip
        self.spinning = spinning
        self.manifest = self._read_manifest()
        m = self.manifest
        try:
            self.latent_dim = int(m["latent_dim"])
            self.data_shape = tuple(int(s) for s in m["data_shape"])
            sc = m["scaling"]
            data = m.get("data") or {}
            self.info = ExportInfo(
                str(data.get("dataset", "?")),
                self.data_shape,
                str(data.get("kind", "?")),
                float(sc["shift"]),
                float(sc["scale"]),
                data.get("label_names"),
                data.get("mixture"),
            )
            self.prior = LatentPrior.from_manifest(m.get("prior"), self.latent_dim)
            self.critic_form = str(m["critic"])
            self.generator = str(m["generator"])
            self.divergence = m.get("divergence")
            files = m["files"]
            self.graphs = {
                g["role"]: _Graph(
                    g["role"],
                    self._top_file(g["file"], "graph file"),
                    g["inputs"],
                    g["outputs"],
                    str(files[g["file"]]),
                    rows=int((g.get("rows_per_call") or {}).get("recommended") or DEFAULT_ROWS),
                )
                for g in m["graphs"]
            }
            sampling = m.get("sampling") or {}
            self.sample_block = int(sampling.get("block_rows", SAMPLE_BLOCK))
            self.score_block = int(sampling.get("score_block_rows", SCORE_BLOCK))
            clip_info = sampling.get("clip") or {}
            self.data_range = tuple(float(v) for v in clip_info["range"]) if clip_info.get("range") else None
            if self.clip is None:
                self.clip = bool(clip_info.get("default", False))
        except (KeyError, TypeError, ValueError) as e:
            raise FGMRuntimeError(
                f"{self.path / 'manifest.json'} is missing or has a bad field ({e!r})",
                "re-export the run with `fgm export --onnx`",
            ) from None
        self.provider: str | None = None  # set by the first session
        self.device_message = ""
        self._providers: list[Any] | None = None

    # ------------------------------------------------------------------ loading
    def _top_file(self, name: Any, what: str) -> Path:
        """``name`` read from the manifest (or the manifest's own name): a plain file at the top
        of the export directory. The manifest is data: an absolute name, ``..`` or a symbolic
        link is refused (the runtime's form of ``fgm_core.storage.confined_file``, which it
        cannot import without torch)."""
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or Path(name).name != name
            or "\\" in name
            or "\0" in name
        ):
            raise FGMRuntimeError(
                f"{self.path / 'manifest.json'} names the {what} {name!r}, outside {self.path}",
                "graph files lie at the top of the export directory; re-export the run",
            )
        path = self.path / name
        if path.is_symlink():
            raise FGMRuntimeError(
                f"{path} is a symbolic link; the runtime reads only plain files inside {self.path}",
                "replace the link by a copy of the file",
            )
        if not path.is_file():
            raise FGMRuntimeError(
                f"{what} {path} is missing or not a plain file", "copy the whole export directory, or re-export the run"
            )
        return path

    def _graph_bytes(self, g: _Graph) -> bytes:
        """The graph's file, refused unless its sha256 is the one the manifest records."""
        data = g.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != g.sha256:
            raise FGMRuntimeError(
                f"{g.path} does not match the sha256 recorded in manifest.json (corrupt, or "
                "changed or replaced after the export)",
                "restore the original file, or re-export the run",
            )
        return data

    def _read_manifest(self) -> dict[str, Any]:
        path = self.path / "manifest.json"
        if not self.path.is_dir():
            raise FGMRuntimeError(f"export directory {self.path} not found", "give the directory `fgm export` wrote")
        if not path.exists() and not path.is_symlink():
            raise FGMRuntimeError(
                f"{self.path} has no manifest.json, so it is not an fgm export",
                "give the directory `fgm export --onnx` wrote",
            )
        self._top_file(path.name, "manifest")
        try:
            m = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FGMRuntimeError(f"cannot read {path}: {e}", "re-export the run") from None
        if not isinstance(m, dict) or m.get("exporter") != "onnx":
            raise FGMRuntimeError(
                f"{path} is not an fgm ONNX manifest (exporter {m.get('exporter') if isinstance(m, dict) else None!r})",
                "open it with the exporter that wrote it",
            )
        version = m.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FGMRuntimeError(
                f"{path} has export format version {version!r}; this runtime reads version {FORMAT_VERSION}",
                "upgrade fgm (the runtime) or re-export with this version",
            )
        if version < FORMAT_VERSION:
            raise FGMRuntimeError(
                f"{path} has export format version {version!r}, older than this runtime's "
                f"{FORMAT_VERSION} (no sha256 record of its files)",
                "re-export the run with this fgm",
            )
        return m

    @property
    def roles(self) -> list[str]:
        return list(self.graphs)

    def _options(self) -> Any:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: a CUDA provider that does not load is reported by us, in one line
        if self.threads is not None:
            opts.intra_op_num_threads = int(self.threads)
            opts.inter_op_num_threads = 1
        if not self.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return opts

    def _new_session(self, graph: bytes) -> Any:
        """A session on the chosen provider (``graph``: the checked bytes of an ONNX file);
        decides the provider on the first call."""
        if self._providers is not None:
            return ort.InferenceSession(graph, self._options(), providers=self._providers)
        cuda = [(CUDA, {"device_id": self.device_id}), CPU]
        available = ort.get_available_providers()
        if self.device == "cpu" or (self.device == "auto" and CUDA not in available):
            sess = ort.InferenceSession(graph, self._options(), providers=[CPU])
            why = "" if self.device == "cpu" else " (this onnxruntime has no CUDA execution provider)"
            self._settle(sess, [CPU], f"onnxruntime: running on {CPU}{why}")
            return sess
        if CUDA not in available:
            raise FGMRuntimeError(
                f"device cuda: this onnxruntime build has no {CUDA} (available: {', '.join(available)})",
                "install onnxruntime-gpu, or use --device cpu/auto",
            )
        with _capture_stderr() as log:
            sess = ort.InferenceSession(graph, self._options(), providers=cuda)
        active = sess.get_providers()[0]
        if active == CUDA:
            self._settle(sess, cuda, f"onnxruntime: running on {CUDA} (device {self.device_id})")
            return sess
        reason = _first_error(log[0] if log else "")
        if self.device == "cuda":
            raise FGMRuntimeError(
                f"device cuda: onnxruntime did not start the CUDA execution provider "
                f"(the session runs on {active}; {reason})",
                "install the CUDA and cuDNN versions this onnxruntime-gpu needs, or use --device cpu/auto",
            )
        self._settle(sess, [CPU], f"onnxruntime: running on {CPU} (CUDA did not start: {reason[:120]})")
        return sess

    def _settle(self, sess: Any, providers: list[Any], message: str) -> None:
        self._providers = providers
        self.provider = sess.get_providers()[0]
        self.device_message = message

    def _session(self, role: str) -> Any:
        g = self.graphs.get(role)
        if g is None:
            why = {"likelihood": "the generator is deterministic, so the model has no likelihood"}.get(role, "")
            raise FGMRuntimeError(
                f"this export has no {role} graph{': ' + why if why else ''}",
                f"graphs here: {', '.join(self.graphs) or 'none'}",
            )
        if g.session is None:
            try:
                sess = self._new_session(self._graph_bytes(g))
                meta = sess.get_modelmeta().custom_metadata_map  # damaged metadata: not UTF-8
            except FGMRuntimeError:
                raise
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                raise FGMRuntimeError(
                    f"onnxruntime cannot load {g.path}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                    "is this file an fgm ONNX export? re-export the run",
                ) from None
            if meta.get("fgm.role") != role:
                raise FGMRuntimeError(
                    f"{g.path} is not an fgm {role} graph (its metadata has fgm.role = {meta.get('fgm.role')!r})",
                    "re-export the run with `fgm export --onnx`",
                )
            fv = meta.get("fgm.format_version", "")
            if not (fv.isascii() and fv.isdigit()) or int(fv) > FORMAT_VERSION:
                raise FGMRuntimeError(
                    f"{g.path} has export format version {fv!r}; this runtime reads {FORMAT_VERSION}",
                    "upgrade fgm or re-export the run",
                )
            names = [i.name for i in sess.get_inputs()]
            if names != [i["name"] for i in g.inputs]:
                raise FGMRuntimeError(
                    f"{g.path} takes inputs {names}, the manifest says {[i['name'] for i in g.inputs]}",
                    "the export directory is inconsistent; re-export",
                )
            for i in [*sess.get_inputs(), *sess.get_outputs()]:
                self._check_shape(g, i.name, list(i.shape))
            g.session, g.meta = sess, dict(meta)
        return g.session

    def _check_shape(self, g: _Graph, name: str, shape: list[Any]) -> None:
        """What this runtime feeds and returns (shapes from the manifest's latent_dim and
        data_shape) must be what the graph has: a manifest that disagrees with its graphs is
        one clear error. Per-row scalars (log_density, ...) have nothing to check."""
        if name not in ("x", "z", "eps", "mu", "logvar"):
            return
        per_row = self.data_shape if name == "x" or (name == "eps" and g.role == "generator") else (self.latent_dim,)
        lead = 2 if name == "eps" and g.role != "generator" else 1  # (K, B, d) or (B, ...)
        fixed = shape[lead:]
        if len(shape) != lead + len(per_row) or any(isinstance(a, int) and a != b for a, b in zip(fixed, per_row)):
            raise FGMRuntimeError(
                f"{g.path} has {name} of shape {shape}, but {self.path / 'manifest.json'} says latent_dim "
                f"{self.latent_dim} and data_shape {list(self.data_shape)}",
                "the export directory is inconsistent; re-export the run with `fgm export --onnx`",
            )

    def settle_device(self) -> str:
        """Choose the execution provider now (by opening the smallest graph) and return the
        one-line :attr:`device_message`, e.g. for a command line to report what ``auto`` got."""
        if self.provider is None and self.graphs:
            self._session(min(self.graphs.values(), key=lambda g: g.path.stat().st_size).role)
        return self.device_message

    def metadata(self, role: str) -> dict[str, str]:
        """The ``fgm.*`` metadata of a graph (strings; JSON for structures)."""
        self._session(role)
        return dict(self.graphs[role].meta)

    # ------------------------------------------------------------------ running graphs
    def run(self, role: str, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run one graph on float32 inputs; IO binding on CUDA, plain ``run`` on CPU."""
        sess = self._session(role)
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        names = outputs or [o.name for o in sess.get_outputs()]
        if self.provider == CUDA:
            binding = sess.io_binding()
            keep = []  # the device copies must live until the run is over
            for name, arr in feeds.items():
                value = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_id)
                keep.append(value)
                binding.bind_ortvalue_input(name, value)
            for name in names:
                binding.bind_output(name, "cuda", self.device_id)
            sess.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()
            del keep
            return out
        try:
            return sess.run(names, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own types, several lines each
            first = " ".join(str(e).split())[:300] or type(e).__name__
            raise FGMRuntimeError(
                f"onnxruntime failed to run the {role} graph ({first})",
                "check the input; if it is right, re-export the run",
            ) from None

    # ------------------------------------------------------------------ input checks
    def _check_x(self, x: Any) -> np.ndarray:
        """Validate data-unit input like ``Run.as_model_input``: (N, *shape) float32, finite."""
        try:
            a = np.asarray(x)
        except Exception as e:  # noqa: BLE001 - ragged lists and the like
            raise RuntimeInputError(f"input cannot be read as an array ({e})", "pass a numeric array") from None
        if a.dtype == bool or a.dtype.kind not in "fiu":
            raise RuntimeInputError(f"input has dtype {a.dtype}, expected numbers", "pass a float array")
        shape, d = self.data_shape, self.info.dims
        if a.ndim == 1 and a.shape[0] == d:
            a = a[None]
        if a.ndim == 2 and len(shape) > 1 and a.shape[1] == d:
            a = a.reshape(-1, *shape)
        if tuple(a.shape[1:]) != shape or a.ndim < 1:
            raise RuntimeInputError(
                f"input has shape {a.shape}, the model expects (N, {', '.join(map(str, shape))})",
                f"pass rows of {d} values",
            )
        if a.shape[0] == 0:
            raise RuntimeInputError("input is empty (0 rows)", "pass at least one row")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: reported next
            f32 = np.ascontiguousarray(a, dtype=np.float32)
        self._check_finite(a, "input")
        if not np.isfinite(f32).all():
            raise RuntimeInputError(
                f"input values up to {float(np.abs(a).max()):.3g} overflow float32", "rescale the data"
            )
        return f32

    @staticmethod
    def _check_finite(a: np.ndarray, what: str) -> None:
        bad = ~np.isfinite(a)
        if bad.any():
            row = (
                int(np.flatnonzero(bad.reshape(a.shape[0], -1).any(1))[0])
                if a.ndim > 1
                else int(np.flatnonzero(bad)[0])
            )
            raise RuntimeInputError(
                f"{what} has NaN or inf values (first in row {row})",
                "clean the data" if what == "input" else f"pass finite {what}",
            )

    def _check_noise(self, a: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        """Validate caller-given noise against ``shape`` (-1: any size)."""
        arr = np.asarray(a)
        if arr.dtype == bool or arr.dtype.kind not in "fiu":
            raise RuntimeInputError(f"{what} has dtype {arr.dtype}, expected numbers", "pass a float array")
        ok = arr.ndim == len(shape) and all(w < 0 or w == s for w, s in zip(shape, arr.shape))
        if not ok or 0 in arr.shape:
            want = ", ".join("N" if w < 0 else str(w) for w in shape)
            raise RuntimeInputError(
                f"{what} has shape {arr.shape}, expected ({want})", f"pass {what} of that shape (N >= 1)"
            )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        self._check_finite(arr, what)
        return arr

    # ------------------------------------------------------------------ calls of bounded size
    def _rows(self, role: str, override: int | None = None) -> int:
        """Rows (rows x K for graphs that take K draws) per call for ``role``."""
        if override is not None:
            return _positive_int(override, "batch", "batch=")
        return self.rows_per_call or self.graphs[role].rows

    def _run_rows(
        self, role: str, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, rows: int | None = None
    ) -> list[np.ndarray]:
        """Run a graph whose inputs all have rows on axis 0, in calls of at most ``rows`` rows."""
        n = next(iter(feeds.values())).shape[0]
        step = self._rows(role, rows)
        parts = [self.run(role, {k: v[i : i + step] for k, v in feeds.items()}, outputs) for i in range(0, n, step)]
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in zip(*parts)]

    def _run_k(
        self, role: str, feeds: dict[str, np.ndarray], eps: np.ndarray, output: str, mean: bool, rows: int | None = None
    ) -> np.ndarray:
        """Run a graph that averages over K draws (``eps`` (K, N, d)) in calls of at most the
        per-call budget of rows x K. Chunks of K are combined exactly: a log-mean-exp of the
        chunks' log-means (``mean=False``, the likelihood) or a weighted mean (``mean=True``)."""
        k, n = eps.shape[0], eps.shape[1]
        budget = self._rows(role, rows)
        kc = min(k, budget)
        step = max(1, budget // kc)
        out = []
        for i in range(0, n, step):
            part = {name: v[i : i + step] for name, v in feeds.items()}
            chunks = [
                self.run(role, {**part, "eps": eps[j : j + kc, i : i + step]}, [output])[0] for j in range(0, k, kc)
            ]
            if len(chunks) == 1:
                out.append(chunks[0])
                continue
            sizes = np.array([min(kc, k - j) for j in range(0, k, kc)], np.float64)[:, None]
            c = np.stack(chunks).astype(np.float64)
            if mean:
                out.append(((c * sizes).sum(0) / k).astype(np.float32))
            else:
                a = c + np.log(sizes)
                top = np.max(a, 0)
                safe = np.where(np.isfinite(top), top, 0.0)
                out.append((safe + np.log(np.exp(a - safe).sum(0)) - math.log(k)).astype(np.float32))
        return out[0] if len(out) == 1 else np.concatenate(out)

    # ------------------------------------------------------------------ the abilities
    def sample(
        self,
        n: int | None = None,
        seed: int = 0,
        z: Any = None,
        eps: Any = None,
        noise: bool = True,
        batch: int | None = None,
        clip: bool | None = None,
    ) -> np.ndarray:
        """``n`` samples in data units, (n, *data_shape) float32.

        Noise: ``z`` (n, d) and ``eps`` (n, *data_shape) if given, else drawn from
        ``numpy.random.default_rng(seed)``: per block of ``sampling.block_rows`` rows (4096),
        z from the manifest's ``prior`` (standard normal, or a mixture: normals, then the
        components) then eps standard normal (the manifest's ``sampling.sample_rule``). ``noise=False``
        gives the generator means (eps = 0). ``batch``: rows per graph call (default: the
        manifest's recommendation). ``clip``: clip image samples to the data range (default:
        the runtime's ``clip``); noise given or drawn is never affected.
        """
        d, shape = self.latent_dim, self.data_shape
        self._session("generator")
        gaussian = "eps" in [i["name"] for i in self.graphs["generator"].inputs]
        if z is not None:
            z = self._check_noise(z, (-1, d), "z")
            if n is not None and _positive_int(n, "number of samples", "-n") != z.shape[0]:
                raise RuntimeInputError(f"n = {n} but z has {z.shape[0]} rows", "leave n out when passing z")
            n = z.shape[0]
        else:
            n = _positive_int(16 if n is None else n, "number of samples", "-n")
        if eps is not None:
            if not gaussian:
                raise RuntimeInputError("this generator is deterministic and takes no eps", "leave eps out")
            eps = self._check_noise(eps, (n, *shape), "eps")
        rng = np.random.default_rng(seed)
        out = []
        for i in range(0, n, self.sample_block):
            b = min(self.sample_block, n - i)
            zb = z[i : i + b] if z is not None else self.prior.draw(rng, b, d)
            feeds = {"z": zb}
            if gaussian:
                if eps is not None:
                    feeds["eps"] = eps[i : i + b]
                elif noise:
                    feeds["eps"] = rng.standard_normal((b, *shape), dtype=np.float32)
                else:
                    feeds["eps"] = np.zeros((b, *shape), np.float32)
            out.append(self._run_rows("generator", feeds, rows=batch)[0])
        x = out[0] if len(out) == 1 else np.concatenate(out)
        if (self.clip if clip is None else clip) and self.data_range is not None:
            np.clip(x, *self.data_range, out=x)
        return x

    def encode(self, x: Any, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance of q(z|x) for data-unit ``x``, each (N, d)."""
        x = self._check_x(x)
        mu, lv = self._run_rows("encoder", {"x": x}, rows=batch)
        return mu, lv

    def _latent_noise(self, eps: Any, k: int, n: int, what: str = "eps") -> np.ndarray | None:
        if eps is None:
            return None
        return self._check_noise(eps, (-1, n, self.latent_dim), what)

    def _k_blocks(self, x: np.ndarray, k: int, seed: int, eps: np.ndarray | None):
        """(rows slice, eps (K, b, d)) per block of ``sampling.score_block_rows`` rows: the seed rule."""
        rng = np.random.default_rng(seed)
        for i in range(0, x.shape[0], self.score_block):
            b = min(self.score_block, x.shape[0] - i)
            e = eps[:, i : i + b] if eps is not None else rng.standard_normal((k, b, self.latent_dim), dtype=np.float32)
            yield slice(i, i + b), e

    def log_likelihood(
        self, x: Any, k: int = 100, seed: int = 0, eps: Any = None, batch: int | None = None
    ) -> np.ndarray:
        """Importance-sampled log p(x) per row, nats, data units (K = ``k`` encoder draws).

        ``eps`` (K, N, d): the standard normal draws to use instead of ``seed``'s. Calls hold
        at most ``batch`` rows x K (default: the manifest's recommendation); K itself is split
        across calls when needed and the parts are combined exactly (log-mean-exp).
        """
        x = self._check_x(x)
        self._session("likelihood")
        k = _positive_int(k, "k", "-k")
        eps = self._latent_noise(eps, k, x.shape[0])
        out = [
            self._run_k("likelihood", {"x": x[rows]}, e, "log_likelihood", mean=False, rows=batch)
            for rows, e in self._k_blocks(x, k, seed, eps)
        ]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def log_density(self, x: Any, k: int = 16, seed: int = 0, eps: Any = None, batch: int | None = None) -> np.ndarray:
        """The density estimator's log p_D(x) per row, nats, data units.

        Density critic: l(x). Free critics: the section-4 estimate averaged over ``k`` encoder
        draws (``eps`` (K, N, d) to pass them), when the export has it.
        """
        x = self._check_x(x)
        g = self.graphs.get("density")
        if g is None or "log_density" not in [o["name"] for o in g.outputs]:
            raise FGMRuntimeError(
                f"this export has no log_density (critic {self.critic_form!r}, generator {self.generator!r}, "
                f"divergence {self._divergence_name()!r})",
                "a free critic yields densities only with a Gaussian generator and a strictly convex f",
            )
        names = [i["name"] for i in g.inputs]
        if "eps" not in names:
            return self._run_rows("density", {"x": x}, ["log_density"], rows=batch)[0]
        k = _positive_int(k, "k", "-k")
        eps = self._latent_noise(eps, k, x.shape[0])
        out = []
        for rows, e in self._k_blocks(x, k, seed, eps):
            feeds = {"x": x[rows]}
            if "z" in names:  # the critic output is not wanted here; z only feeds it
                feeds["z"] = np.zeros((feeds["x"].shape[0], self.latent_dim), np.float32)
            out.append(self._run_k("density", feeds, e, "log_density", mean=True, rows=batch))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def critic(self, x: Any, z: Any = None, batch: int | None = None) -> np.ndarray:
        """The raw critic value per row: V(x, z) (joint, needs ``z``), V(x) (marginal), or the
        density estimator's log p_D(x) in data units (density)."""
        x = self._check_x(x)
        self._session("density")
        if self.critic_form == "density":
            return self._run_rows("density", {"x": x}, rows=batch)[0]
        names = [i["name"] for i in self.graphs["density"].inputs]
        feeds = {"x": x}
        if "z" in names:
            if z is None:
                raise RuntimeInputError("the joint critic V(x, z) needs z", "pass z, shape (N, latent_dim)")
            feeds["z"] = self._check_noise(z, (x.shape[0], self.latent_dim), "z")
        if "eps" not in names:
            return self._run_rows("density", feeds, ["critic"], rows=batch)[0]
        one = np.zeros((1, x.shape[0], self.latent_dim), np.float32)  # K = 1: the critic ignores eps
        return self._run_k("density", feeds, one, "critic", mean=True, rows=batch)

    def _divergence_name(self) -> str:
        d = self.divergence
        return str(d.get("name")) if isinstance(d, dict) else str(d)

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeModel({str(self.path)!r}, roles={self.roles}, data_shape={self.data_shape}, "
            f"latent_dim={self.latent_dim}, provider={self.provider or 'not started'})"
        )


def open_export(export_dir: str | os.PathLike, device: str = "auto", **kw: Any) -> OnnxRuntimeModel:
    """Open an fgm ONNX export directory (see :class:`OnnxRuntimeModel`)."""
    return OnnxRuntimeModel(export_dir, device=device, **kw)


__all__ = ["ExportInfo", "FGMRuntimeError", "LatentPrior", "OnnxRuntimeModel", "RuntimeInputError", "open_export"]
