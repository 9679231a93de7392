"""2-D synthetic sets: ``ring8`` and ``grid25`` (PacGAN protocol) and ``swissroll``."""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, field_validator

from fgm_core.components import DataBundle, DataRequest, Scaling
from fgm_core.errors import FGMError

from .common import Options, check_request, make_bundle, parse_options, rng


class MixtureOptions(Options):
    n_train: int = Field(100_000, ge=1, description="training points")
    n_test: int = Field(10_000, ge=1, description="test points")
    std: float | None = Field(None, gt=0, description="per-axis std (default: protocol value)")
    modes: list[int] | None = Field(None, min_length=1, description="component indices to keep")

    @field_validator("modes")
    @classmethod
    def _unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("mode indices must be distinct")
        return v


class RingOptions(MixtureOptions):
    radius: float = Field(1.0, gt=0, description="ring radius")


class SwissRollOptions(Options):
    n_train: int = Field(100_000, ge=1)
    n_test: int = Field(10_000, ge=1)
    noise: float = Field(0.25, ge=0, description="Gaussian noise std, in output units")


def ring_means(k: int = 8, radius: float = 1.0) -> np.ndarray:
    """(cos 2 pi j/k, sin 2 pi j/k) * radius, j = 0..k-1 (not linspace(0, 2 pi, k))."""
    a = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def grid_means() -> np.ndarray:
    """{-4,-2,0,2,4}^2 in row-major order: index 5 i + j is (2 (i-2), 2 (j-2))."""
    v = np.arange(-4.0, 5.0, 2.0)
    return np.stack(np.meshgrid(v, v, indexing="ij"), axis=-1).reshape(-1, 2)


def _mixture_bundle(
    name: str, request: DataRequest, opts: MixtureOptions, means: np.ndarray, std: float, extra_info: dict
) -> DataBundle:
    k = len(means)
    kept = list(range(k)) if opts.modes is None else list(opts.modes)
    bad = [m for m in kept if not 0 <= m < k]
    if bad:
        raise FGMError(
            f"dataset {name!r}: option modes has index {bad[0]} outside 0..{k - 1}",
            f"{name} has {k} modes, numbered 0..{k - 1}",
        )
    kept_arr = np.array(sorted(kept), dtype=np.int64)

    def sample(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        g = rng(request.seed, stream)
        labels = kept_arr[g.integers(0, len(kept_arr), size=n)]
        x = means[labels] + std * g.standard_normal((n, 2))
        return x.astype(np.float32), labels

    xtr, ytr = sample(opts.n_train, 0)
    xte, yte = sample(opts.n_test, 1)
    mixture = {
        "means": torch.tensor(means, dtype=torch.float32),
        "stds": torch.full((k, 2), float(std), dtype=torch.float32),
        "weights": torch.full((k,), 1.0 / k, dtype=torch.float32),
    }
    info = {
        "kept_modes": kept_arr.tolist(),
        "n_modes": k,
        "std": float(std),
        "seed": request.seed,
        "protocol": "PacGAN",
        **extra_info,
    }
    return make_bundle(
        name,
        xtr,
        xte,
        "vector",
        Scaling(),
        train_labels=ytr,
        test_labels=yte,
        label_names=[f"mode-{i}" for i in range(k)],
        mixture=mixture,
        info=info,
    )


def ring8(request: DataRequest) -> DataBundle:
    """8 Gaussians on the unit circle, std 0.01 (PacGAN)."""
    check_request("ring8", request)
    opts = parse_options("ring8", RingOptions, request.options)
    std = 0.01 if opts.std is None else opts.std
    return _mixture_bundle("ring8", request, opts, ring_means(8, opts.radius), std, {"radius": opts.radius})


def grid25(request: DataRequest) -> DataBundle:
    """25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (PacGAN)."""
    check_request("grid25", request)
    opts = parse_options("grid25", MixtureOptions, request.options)
    std = 0.05 if opts.std is None else opts.std
    return _mixture_bundle("grid25", request, opts, grid_means(), std, {})


def swissroll(request: DataRequest) -> DataBundle:
    """2-D swiss roll: t in [1.5 pi, 4.5 pi], x = (t cos t, t sin t) / 5, plus Gaussian noise."""
    check_request("swissroll", request)
    opts = parse_options("swissroll", SwissRollOptions, request.options)

    def sample(n: int, stream: int) -> np.ndarray:
        g = rng(request.seed, stream)
        t = 1.5 * math.pi * (1 + 2 * g.random(n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
        return (x + opts.noise * g.standard_normal((n, 2))).astype(np.float32)

    return make_bundle(
        "swissroll",
        sample(opts.n_train, 0),
        sample(opts.n_test, 1),
        "vector",
        Scaling(),
        info={"noise": opts.noise, "seed": request.seed},
    )
