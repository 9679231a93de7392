"""A trained f-GM run: load it, sample, infer latents, and score data, in the data's own units."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgm_core.build import DataInfo, make_model, resolve_device
from fgm_core.config import FGMConfig, validate
from fgm_core.errors import FGMError
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet, get_plugins
from fgm_core.storage import check_format, checkpoint_files, confined_file, load_tensors, read_json

#: Most importance samples per row: the estimate's error falls as 1/sqrt(K), so beyond this
#: only the cost grows (a million network evaluations per row).
MAX_K = 1_000_000
#: Most network rows (data rows x K) in one call on vectors; calls on images take 512.
MAX_CALL_ROWS = 65_536


def memory_available() -> int:
    """Bytes of memory available now (Linux: MemAvailable; elsewhere: free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_result_size(rows: int, values_per_row: int, what: str, hint: str) -> None:
    """Refuse a result that would not fit: float32 rows, counted twice (the pieces and the
    joined array), must stay within half the memory available now."""
    need = 2 * 4 * rows * max(1, values_per_row)
    budget = memory_available() // 2
    if need > budget:
        raise FGMError(
            f"{what} needs about {need / 2**30:.3g} GiB of memory, more than half of the "
            f"{2 * budget / 2**30:.3g} GiB available",
            hint,
        )


def check_k(k: int) -> None:
    if k < 1:
        raise FGMError(f"k must be positive, got {k}", "use k >= 1")
    if k > MAX_K:
        raise FGMError(
            f"k = {k} importance samples per row is more than the {MAX_K:,} fgm takes "
            "(the estimate's error falls as 1/sqrt(K); beyond that only the cost grows)",
            f"use -k {MAX_K} or fewer",
        )


class Run:
    """A model plus what it needs to work in data units. Get one from :meth:`load` or training."""

    def __init__(
        self, path: Path, config: FGMConfig, model: FGMModel, info: DataInfo, plugins: list[dict[str, str]]
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.model = model
        self.info = info
        self.plugins = plugins

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", plugins: PluginSet | None = None) -> Run:
        """Load a run directory (final weights, else the latest checkpoint).

        The directory is data, never code: its files are read (inside it only, sha256-checked
        weights), and the components come from the installed plugins and the user's own
        policy, never from a ``plugins.toml`` or module inside the run directory.
        """

        path = Path(path)
        if not path.is_dir():
            raise FGMError(f"run directory {path} not found", "give the directory `fgm train` printed")

        def read(name: str) -> Any:
            return read_json(confined_file(path, name, path))

        meta = read("fgm.json")
        check_format(meta, path / "fgm.json")
        if meta.get("kind") != "run":
            raise FGMError(
                f"{path} is not a run directory (kind {meta.get('kind')!r})", "give a training run directory"
            )
        cfg = validate(read("config.json"), str(path / "config.json"))
        info = DataInfo.from_dict(read("data.json"))
        recorded = read("plugins.json")
        plugins = plugins or get_plugins()
        dev = resolve_device(device)
        model = make_model(cfg, plugins, info).to(dev)
        record = meta.get("sha256")
        sha = record.get("model.safetensors") if isinstance(record, dict) else None
        if sha is not None and (path / "model.safetensors").exists():
            weights = confined_file(path, "model.safetensors", path / "fgm.json")
        else:  # not finished (or stopped while writing the final weights): the last checkpoint
            weights, sha = checkpoint_files(path)["model.safetensors"]
        state = load_tensors(weights, dev, sha256=sha)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise FGMError(
                f"{weights} does not match the run's networks ({str(e).splitlines()[0]})",
                "the architecture plugin changed since training; install the version in plugins.json",
            ) from None
        model.eval()
        return cls(path, cfg, model, info, recorded)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def as_model_input(self, x: Any) -> Tensor:
        """Validate data-unit input (array or tensor) and map it to model units."""
        if not isinstance(x, Tensor):
            x = np.asarray(x)
            if x.dtype.kind not in "biuf":  # strings, objects, complex: torch cannot even convert them
                raise FGMError(f"input has dtype {x.dtype}, expected numbers", "pass a float array")
        t = torch.as_tensor(x)
        if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.uint8)):
            raise FGMError(f"input has dtype {t.dtype}, expected numbers", "pass a float array")
        t = t.float()
        shape = self.info.shape
        d = self.info.dims
        if t.dim() == 1 and t.shape[0] == d:
            t = t[None]
        if t.dim() == 2 and len(shape) > 1 and t.shape[1] == d:
            t = t.reshape(-1, *shape)
        if tuple(t.shape[1:]) != shape:
            raise FGMError(
                f"input has shape {tuple(t.shape)}, the model expects (N, {', '.join(map(str, shape))})",
                f"pass rows of {d} values",
            )
        if t.shape[0] == 0:
            raise FGMError("input is empty (0 rows)", "pass at least one row")
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).flatten(1).any(1).nonzero()[0])
            raise FGMError(f"input has NaN or inf values (first in row {bad})", "clean the data")
        return self.info.scaling.to_model(t).to(self.device)

    # ------------------------------------------------------------------ the three abilities
    def _rows(self, vector_rows: int, per_row: int = 1) -> int:
        """Data rows per network call: ``vector_rows`` for vectors; for images 512 network rows
        (``per_row`` each), since conv activations and transposed-conv buffers are large
        (10,000 DCGAN samples took 1,080 MB at 4096 rows a call)."""
        if len(self.info.shape) == 1:
            return max(1, min(vector_rows, MAX_CALL_ROWS // per_row))
        return max(1, 512 // per_row)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, noise: bool = True, batch: int | None = None) -> Tensor:
        """``n`` samples in data units (``noise=False``: the generator means). Per batch, z's
        normals, then (for a prior that needs them, a mixture) one uniform per row, then the
        generator noise, all from one generator seeded by ``seed``."""
        if n < 1:
            raise FGMError(f"number of samples must be positive, got {n}", "use -n 1 or more")
        check_result_size(n, self.info.dims, f"{n} samples of {self.info.dims} values", "draw fewer samples at a time")
        batch = batch or self._rows(4096)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, n, batch):
            b = min(batch, n - i)
            z = torch.randn(b, self.model.latent_dim, generator=g, device=self.device)
            u = torch.rand(b, generator=g, device=self.device) if self.model.prior.needs_uniform else None
            z = self.model.prior.sample(z, u)
            eps = torch.randn(b, *self.info.shape, generator=g, device=self.device) if noise else None
            out.append(self.model.generate(z, eps))
        return self.info.scaling.to_data(torch.cat(out)).cpu()

    @torch.no_grad()
    def encode(self, x: Any) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of q(z|x) for data-unit ``x``."""
        mu, logvar = self.model.encode(self.as_model_input(x))
        return mu.cpu(), logvar.cpu()

    @torch.no_grad()
    def log_likelihood(self, x: Any, k: int = 100, seed: int = 0, batch: int | None = None) -> Tensor:
        """Importance-sampled log p(x) per row, nats, in data units (K = ``k`` samples)."""
        check_k(k)
        batch = batch or self._rows(512, k)
        xm = self.as_model_input(x)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        chunk = MAX_CALL_ROWS if len(self.info.shape) == 1 else 512  # most samples of one row per call
        for i in range(0, xm.shape[0], batch):
            xb = xm[i : i + batch]
            if k <= chunk:
                eps = torch.randn(k, xb.shape[0], self.model.latent_dim, generator=g, device=self.device)
                out.append(self.model.log_likelihood(xb, eps))
                continue
            parts = []  # K in pieces: log mean w = logsumexp_j(log mean_j w + log K_j) - log K
            for j in range(0, k, chunk):
                kj = min(chunk, k - j)
                eps = torch.randn(kj, xb.shape[0], self.model.latent_dim, generator=g, device=self.device)
                parts.append(self.model.log_likelihood(xb, eps) + math.log(kj))
            out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
        return torch.cat(out).cpu() + self.info.scaling.log_det(self.info.dims)

    @torch.no_grad()
    def log_density(self, x: Any, k: int = 16, seed: int = 0, batch: int | None = None) -> Tensor:
        """The density estimator's log p_D(x) per row, nats, in data units."""
        per_row = 1 if self.model.critic_form == "density" else k
        batch = batch or self._rows(512, per_row)
        xm = self.as_model_input(x)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, xm.shape[0], batch):
            xb = xm[i : i + batch]
            eps = None
            if self.model.critic_form != "density":
                eps = torch.randn(k, xb.shape[0], self.model.latent_dim, generator=g, device=self.device)
            out.append(self.model.log_density(xb, eps))
        return torch.cat(out).cpu() + self.info.scaling.log_det(self.info.dims)
