"""Figures: samples against the true modes (2-D) or as an image grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fgm_core.storage import MAX_DATA_BYTES, confined_file, read_input, refuse_links
from fgm_report.evaluate import open_model


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: np.ndarray, scaling_max: float = 255.0, cols: int | None = None) -> np.ndarray:
    """(N, C, H, W) data-unit images -> one (H', W', C) uint8 grid."""
    n, c, h, w = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + 2), cols * (w + 2), c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = images[i].transpose(
            1, 2, 0
        )
    return np.clip(grid / scaling_max * 255.0, 0, 255).astype(np.uint8)


def save_samples(run: Any, samples: torch.Tensor, path: Path, title: str | None = None) -> Path:
    """Scatter plot with the true mixture modes for 2-D data; a grid for images."""
    plt = _plt()
    info = run.info
    cfg = run.config
    title = title or f"{cfg.divergence.name} / {cfg.critic.form} critic / {info.dataset}" + (
        " (generator means)" if len(info.shape) > 1 else ""
    )
    x = samples.numpy()
    if len(info.shape) == 1 and info.shape[0] == 2:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label="samples")
        if info.mixture is not None:
            m = np.asarray(info.mixture["means"])
            ax.scatter(m[:, 0], m[:, 1], s=40, c="red", marker="x", label="modes")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7)
        ax.set_title(title, fontsize=9)
    elif len(info.shape) == 3:
        top = info.scaling.shift + info.scaling.scale
        grid = image_grid(x[:64], scaling_max=top)
        fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
        ax.set_title(title, fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        ax.hist(x.reshape(x.shape[0], -1)[:, 0], bins=60)
        ax.set_title(title + " (first coordinate)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_array_plot(x: np.ndarray, model: Any, path: Path) -> Path:
    """Plot samples from a run or an export runtime: scatter for 2-D rows, grid for images."""
    plt = _plt()
    x = np.asarray(x, dtype=np.float32)
    info = getattr(model, "info", None)
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        mixture = getattr(info, "mixture", None) if info is not None else None
        if mixture:
            m = np.asarray(mixture["means"])
            ax.scatter(m[:, 0], m[:, 1], s=40, c="red", marker="x")
        ax.set_aspect("equal")
    elif x.ndim == 4:
        top = 255.0 if x.max() > 1.5 else 1.0
        grid = image_grid(x[:256], scaling_max=top)
        fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
    else:
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        ax.hist(x.reshape(x.shape[0], -1)[:, 0], bins=60)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- evaluation figures
def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _info_field(info: Any, name: str) -> Any:
    return info.get(name) if isinstance(info, dict) else getattr(info, name, None)


def _scaling_top(info: Any) -> float:
    sc = _info_field(info, "scaling")
    if isinstance(sc, dict):
        return sc["shift"] + sc["scale"]
    return sc.shift + sc.scale


def _draw_samples(ax: Any, x: np.ndarray, info: Any, title: str) -> None:
    shape = tuple(_info_field(info, "shape"))
    if len(shape) == 1 and shape[0] == 2:
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.35)
        mixture = _info_field(info, "mixture")
        if mixture:
            m = np.asarray(mixture["means"])
            ax.scatter(m[:, 0], m[:, 1], s=30, c="red", marker="x", linewidths=1)
            lo, hi = m.min(0) - 0.6 * np.ptp(m, 0).max() / 4 - 0.3, m.max(0) + 0.6 * np.ptp(m, 0).max() / 4 + 0.3
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
    elif len(shape) == 3:
        grid = image_grid(x[:64], scaling_max=_scaling_top(info))
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.axis("off")
    else:
        ax.hist(x.reshape(x.shape[0], -1)[:, 0], bins=60)
    ax.set_title(title, fontsize=8)


def samples_figure(panels: list[tuple[str, np.ndarray, Any]], path: Path) -> Path:
    """One panel per (title, data-unit samples, info): scatter with true modes, or an image grid."""
    plt = _plt()
    n = len(panels)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.5 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, x, info) in zip(axes.flat, panels):
        _draw_samples(ax, np.asarray(x, dtype=np.float32), info, title)
    fig.tight_layout()
    return _save(fig, path)


def _grid_box(info: Any, bundle_x: np.ndarray | None = None) -> tuple[float, float, float, float]:
    mixture = _info_field(info, "mixture")
    if mixture:
        m = np.asarray(mixture["means"])
        pad = 0.25 * np.ptp(m, 0).max() + 0.2
        return m[:, 0].min() - pad, m[:, 0].max() + pad, m[:, 1].min() - pad, m[:, 1].max() + pad
    x = bundle_x if bundle_x is not None else np.zeros((1, 2))
    lo, hi = np.percentile(x, 0.5, 0), np.percentile(x, 99.5, 0)
    pad = 0.1 * (hi - lo).max()
    return lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad


def colour_limits(v: np.ndarray, span: float = 12.0, lo_pct: float = 2.0, hi_pct: float = 99.5) -> tuple[float, float]:
    """Robust colour range of a log-density map: the ``hi_pct`` percentile on top (a few
    extreme peaks do not darken the rest), the ``lo_pct`` percentile below, at most ``span``
    nats apart (values outside are drawn in the end colours)."""
    f = v[np.isfinite(v)]
    if f.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(f, hi_pct))
    lo = max(float(np.percentile(f, lo_pct)), hi - span)
    return (lo, hi) if hi > lo else (hi - 1.0, hi)


def density_figure(
    models: list[tuple[str, Any]],
    path: Path,
    res: int = 72,
    k: int = 16,
    data: np.ndarray | None = None,
    span: float = 12.0,
) -> Path:
    """2-D only: log density of the density estimator (left) and of the model (right, importance
    sampled) on a grid, one row per (title, model); robust colour range (:func:`colour_limits`)."""
    plt = _plt()
    n = len(models)
    fig, axes = plt.subplots(n, 2, figsize=(7.6, 3.6 * n), dpi=90, squeeze=False)
    info = models[0][1].info
    x0, x1, y0, y1 = _grid_box(info, data)
    gx, gy = np.meshgrid(np.linspace(x0, x1, res), np.linspace(y0, y1, res))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    for row, (title, model) in zip(axes, models):
        for ax, which in zip(row, ("estimator log p_D", "model log p_theta")):
            try:
                if which.startswith("estimator"):
                    v = np.asarray(model.log_density(pts, k=k))
                else:
                    v = np.asarray(model.log_likelihood(pts, k=k))
            except Exception as e:  # noqa: BLE001 - e.g. an export without a density graph
                ax.text(0.5, 0.5, f"n/a: {type(e).__name__}", ha="center", va="center", fontsize=7)
                ax.axis("off")
                continue
            v = v.reshape(res, res)
            lo, hi = colour_limits(v, span)
            im = ax.imshow(v, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis", aspect="equal", vmin=lo, vmax=hi)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, extend="both")
            bar.ax.tick_params(labelsize=7)
            bar.set_label("nats", fontsize=7)
            mixture = _info_field(model.info, "mixture")
            if mixture:
                m = np.asarray(mixture["means"])
                ax.scatter(m[:, 0], m[:, 1], s=8, c="red", marker="x", linewidths=0.6)
            ax.set_title(f"{title}: {which}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    import json

    p = confined_file(Path(run_dir), "metrics.jsonl", Path(run_dir))
    if not p.exists():
        return []
    rows = []
    for line in read_input(p, "metrics log", MAX_DATA_BYTES).decode(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def curves_figure(
    groups: dict[str, list[Path]],
    path: Path,
    keys: tuple[str, ...] = ("divergence", "loss_critic", "loss_generator", "sigma"),
) -> Path:
    """Training curves from metrics.jsonl: one line per group (mean over its runs), one panel per key."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), dpi=100, squeeze=False)
    for label, runs in groups.items():
        series = [read_metrics(r) for r in runs]
        series = [s for s in series if s]
        if not series:
            continue
        n = min(len(s) for s in series)
        steps = [r["step"] for r in series[0][:n]]
        for ax, key in zip(axes[0], keys):
            vals = np.array([[r.get(key, np.nan) for r in s[:n]] for s in series], dtype=float)
            ax.plot(steps, np.nanmean(vals, 0), label=label, lw=1, marker="o" if n < 5 else None, ms=3)
    for ax, key in zip(axes[0], keys):
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6, which="both")
        if key == "sigma":
            ax.set_yscale("log")
        elif key == "divergence":
            ax.set_yscale("symlog", linthresh=1e-2)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_run(run_dir: Path, out_dir: Path | None = None, n: int = 2500, seed: int = 0) -> list[Path]:
    """Samples, 2-D density heatmaps and training curves of one run (or export) directory."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    model = open_model(run_dir)
    if out_dir is None and run_dir.is_dir():
        refuse_links(run_dir)  # the plots go into the run directory: no link may lead them elsewhere
    info = model.info
    name = run_dir.name
    written = [samples_figure([(name, np.asarray(model.sample(n, seed=seed)), info)], out / "samples.png")]
    shape = tuple(_info_field(info, "shape"))
    if len(shape) == 1 and shape[0] == 2:
        data = None
        if not _info_field(info, "mixture"):
            data = np.asarray(model.sample(n, seed=seed))
        written.append(density_figure([(name, model)], out / "density.png", data=data))
    if (run_dir / "metrics.jsonl").exists():
        written.append(curves_figure({name: [run_dir]}, out / "curves.png"))
    return written
