"""``shapes``: a procedural image set (no files): 4 shape kinds x 2 sizes = 8 balanced classes."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fgm_core.components import DataBundle, DataRequest

from .common import IMAGE_SCALING, Options, check_request, make_bundle, parse_options, rng

KINDS = ("square", "circle", "triangle", "cross")
SIZES = {"small": 0.2, "large": 0.34}  # half-width as a fraction of the image side
CLASS_NAMES = [f"{k}-{s}" for k in KINDS for s in SIZES]  # label = 2 * kind + size
SUPERSAMPLE = 3  # anti-aliasing: SUPERSAMPLE^2 samples per pixel
CHUNK = 2048


class ShapesOptions(Options):
    n_train: int = Field(20_000, ge=1)
    n_test: int = Field(2_000, ge=1)
    size: Literal[28, 32] = 28
    channels: Literal[1, 3] = 1


def _inside(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership test in the unit shape's frame (u right, v down; half-width 1)."""
    au, av = np.abs(u), np.abs(v)
    if kind == 0:  # square
        return (au <= 0.85) & (av <= 0.85)
    if kind == 1:  # circle
        return u * u + v * v <= 1.0
    if kind == 2:  # triangle, apex up
        return (v >= -1.0) & (v <= 0.8) & (au <= (v + 1.0) * 0.5556)
    return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))  # cross


def render(labels: np.ndarray, size: int, channels: int, g: np.random.Generator) -> np.ndarray:
    """Render one image per label, (N, C, size, size) float32 in 0..255, anti-aliased."""
    n = len(labels)
    out = np.zeros((n, channels, size, size), dtype=np.float32)
    half = np.array(list(SIZES.values()))[labels % 2] * size
    jitter = g.uniform(-0.08, 0.08, size=(n, 2)) * size
    centre = size / 2 + jitter
    if channels == 1:
        colour = g.uniform(150, 255, size=(n, 1))
    else:
        colour = g.uniform(60, 255, size=(n, 3))
    s = SUPERSAMPLE
    coords = (np.arange(size * s, dtype=np.float32) + 0.5) / s  # sample positions in pixels
    for lo in range(0, n, CHUNK):
        idx = np.arange(lo, min(n, lo + CHUNK))
        cover = np.zeros((len(idx), size, size), dtype=np.float32)
        for kind in range(len(KINDS)):
            sel = idx[labels[idx] // 2 == kind]
            if len(sel) == 0:
                continue
            r = half[sel, None, None].astype(np.float32)
            u = (coords[None, None, :] - centre[sel, 0, None, None].astype(np.float32)) / r
            v = (coords[None, :, None] - centre[sel, 1, None, None].astype(np.float32)) / r
            m = _inside(kind, u, v).view(np.uint8)
            hits = np.zeros((len(sel), size, size), dtype=np.uint8)
            for a in range(s):  # box-filter the s x s samples of each pixel
                for b in range(s):
                    hits += m[:, a::s, b::s]
            cover[sel - lo] = hits * np.float32(1.0 / (s * s))
        out[idx] = cover[:, None] * colour[idx, :, None, None].astype(np.float32)
    return out


def shapes(request: DataRequest) -> DataBundle:
    """8 classes (square/circle/triangle/cross x small/large), jittered position and intensity."""
    check_request("shapes", request)
    opts = parse_options("shapes", ShapesOptions, request.options)

    def make(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        g = rng(request.seed, stream)
        labels = g.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
        return render(labels, opts.size, opts.channels, g), labels

    xtr, ytr = make(opts.n_train, 0)
    xte, yte = make(opts.n_test, 1)
    return make_bundle(
        "shapes",
        xtr,
        xte,
        "image",
        IMAGE_SCALING,
        train_labels=ytr,
        test_labels=yte,
        label_names=list(CLASS_NAMES),
        info={"size": opts.size, "channels": opts.channels, "seed": request.seed},
    )


def _peek(options: dict) -> tuple[str, tuple[int, int, int]]:
    """Image data of (channels, size, size), known from the options alone."""
    opts = parse_options("shapes", ShapesOptions, options)
    return "image", (opts.channels, opts.size, opts.size)


shapes.peek = _peek  # type: ignore[attr-defined]
