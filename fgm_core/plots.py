"""Figures: samples against the true modes (2-D) or as an image grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


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
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = images[i].transpose(1, 2, 0)
    return np.clip(grid / scaling_max * 255.0, 0, 255).astype(np.uint8)


def save_samples(run: Any, samples: torch.Tensor, path: Path, title: str | None = None) -> Path:
    """Scatter plot with the true mixture modes for 2-D data; a grid for images."""
    plt = _plt()
    info = run.info
    cfg = run.config
    title = title or f"{cfg.divergence.name} / {cfg.critic.form} critic / {info.dataset}"
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
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
