"""Sample-side metrics for 2-D Gaussian mixtures (the PacGAN/VEEGAN protocol, docs/math.md section 5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mixture_metrics(samples: Tensor, means: Tensor, stds: Tensor, threshold: float = 3.0) -> dict[str, float]:
    """Modes captured, high-quality share and KL(mode histogram || uniform).

    A sample is high quality when its Mahalanobis distance to the nearest mode is below
    ``threshold``; a mode is captured when at least one high-quality sample is nearest to it.
    """
    samples, means, stds = samples.double(), means.double(), stds.double()
    d = (((samples[:, None, :] - means[None]) / stds[None]) ** 2).sum(-1).sqrt()  # (N, K)
    dist, nearest = d.min(1)
    hq = dist < threshold
    k = means.shape[0]
    counts = torch.bincount(nearest[hq], minlength=k).double()
    captured = int((counts > 0).sum())
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p[p > 0]
        kl = math.log(k) + float((nz * nz.log()).sum())
    else:
        kl = float("inf")
    return {
        "modes_captured": captured,
        "modes_total": k,
        "high_quality": float(hq.double().mean()),
        "kl_to_uniform": kl,
        "samples": int(samples.shape[0]),
    }


def mixture_log_density(x: Tensor, means: Tensor, stds: Tensor, weights: Tensor | None = None) -> Tensor:
    """Exact log density of a diagonal Gaussian mixture at ``x`` (N, D)."""
    x, means, stds = x.double(), means.double(), stds.double()
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights.double() / weights.sum()
    r = (x[:, None, :] - means[None]) / stds[None]
    comp = (-0.5 * (math.log(2 * math.pi) + r * r) - stds.log()[None]).sum(-1)
    return torch.logsumexp(comp + w.log()[None], 1)
