"""A trained f-GM run: load it, sample, infer latents, and score data, in the data's own units."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgm_core.build import DataInfo, make_model
from fgm_core.config import FGMConfig, validate
from fgm_core.errors import FGMError
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet, get_plugins
from fgm_core.storage import load_tensors, read_json


class Run:
    """A model plus what it needs to work in data units. Get one from :meth:`load` or training."""

    def __init__(self, path: Path, config: FGMConfig, model: FGMModel, info: DataInfo,
                 plugins: list[dict[str, str]]) -> None:
        self.path = Path(path)
        self.config = config
        self.model = model
        self.info = info
        self.plugins = plugins

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", plugins: PluginSet | None = None) -> Run:
        """Load a run directory (final weights, else the latest checkpoint)."""
        from fgm_core.trainer import check_format, resolve_device

        path = Path(path)
        if not path.is_dir():
            raise FGMError(f"run directory {path} not found", "give the directory `fgm train` printed")
        meta = read_json(path / "fgm.json")
        check_format(meta, path / "fgm.json")
        if meta.get("kind") != "run":
            raise FGMError(f"{path} is not a run directory (kind {meta.get('kind')!r})", "give a training run directory")
        cfg = validate(read_json(path / "config.json"), str(path / "config.json"))
        info = DataInfo.from_dict(read_json(path / "data.json"))
        recorded = read_json(path / "plugins.json")
        plugins = plugins or get_plugins(near=path)
        dev = resolve_device(device)
        model = make_model(cfg, plugins, info).to(dev)
        weights = path / "model.safetensors"
        if not weights.exists():
            from fgm_core.trainer import read_pointer

            weights = path / "checkpoints" / f"{read_pointer(path).tag}.model.safetensors"
        state = load_tensors(weights, dev)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise FGMError(f"{weights} does not match the run's networks ({str(e).splitlines()[0]})",
                           "the architecture plugin changed since training; install the version in plugins.json") from None
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
            raise FGMError(f"input has shape {tuple(t.shape)}, the model expects (N, {', '.join(map(str, shape))})",
                           f"pass rows of {d} values")
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
        return vector_rows if len(self.info.shape) == 1 else max(1, 512 // per_row)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, noise: bool = True, batch: int | None = None) -> Tensor:
        """``n`` samples in data units (``noise=False``: the generator means)."""
        if n < 1:
            raise FGMError(f"number of samples must be positive, got {n}", "use -n 1 or more")
        batch = batch or self._rows(4096)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, n, batch):
            b = min(batch, n - i)
            z = torch.randn(b, self.model.latent_dim, generator=g, device=self.device)
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
        if k < 1:
            raise FGMError(f"k must be positive, got {k}", "use k >= 1")
        batch = batch or self._rows(512, k)
        xm = self.as_model_input(x)
        g = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        for i in range(0, xm.shape[0], batch):
            xb = xm[i:i + batch]
            eps = torch.randn(k, xb.shape[0], self.model.latent_dim, generator=g, device=self.device)
            out.append(self.model.log_likelihood(xb, eps))
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
            xb = xm[i:i + batch]
            eps = None
            if self.model.critic_form != "density":
                eps = torch.randn(k, xb.shape[0], self.model.latent_dim, generator=g, device=self.device)
            out.append(self.model.log_density(xb, eps))
        return torch.cat(out).cpu() + self.info.scaling.log_det(self.info.dims)

    # ------------------------------------------------------------------ a quick look after training
    def quick_evaluation(self, bundle=None) -> dict[str, Any]:
        """Summary written after training: mixture metrics on 2-D data, held-out likelihood."""
        t0 = time.perf_counter()
        out: dict[str, Any] = {"step": None}
        n = self.config.run.eval_samples
        samples = self.sample(n, seed=self.config.run.seed + 1)
        if self.info.mixture is not None:
            from fgm_core.metrics import mixture_metrics

            out.update(mixture_metrics(samples, torch.tensor(self.info.mixture["means"]),
                                       torch.tensor(self.info.mixture["stds"])))
        if bundle is not None and self.model.generator == "gaussian":
            images = len(self.info.shape) > 1  # keep the after-training look cheap for conv nets
            test = bundle.test[: 256 if images else 2000]
            ll = self.log_likelihood(test, k=16 if images else 50)
            out["test_log_likelihood_k"] = 16 if images else 50
            out["test_log_likelihood"] = float(ll.mean())
            if len(self.info.shape) > 1:
                out["test_bits_per_dim"] = float(-ll.mean() / (self.info.dims * math.log(2)))
        try:
            from fgm_core.plots import save_samples

            if len(self.info.shape) > 1:  # pixel noise hides image samples: show generator means
                samples = self.sample(64, seed=self.config.run.seed + 1, noise=False)
            out["samples_plot"] = str(save_samples(self, samples, self.path / "samples.png"))
        except Exception as e:  # noqa: BLE001 - a plot failure must not lose a finished run
            out["samples_plot_error"] = str(e)
        out["eval_seconds"] = round(time.perf_counter() - t0, 2)
        return out
