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


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two continuous samples (no ties)."""
    ra = torch.argsort(torch.argsort(a.flatten())).double()
    rb = torch.argsort(torch.argsort(b.flatten())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def data_mixture(mixture: dict, kept: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Means, stds and weights of the mixture the data was drawn from: a dataset reduced to
    some modes (``kept``) draws them with equal weights."""
    means, stds = torch.as_tensor(mixture["means"]).double(), torch.as_tensor(mixture["stds"]).double()
    if kept is None:
        w = mixture.get("weights")
        w = torch.full((means.shape[0],), 1.0, dtype=torch.float64) if w is None else torch.as_tensor(w).double()
        return means, stds, w / w.sum()
    idx = torch.as_tensor(kept, dtype=torch.long)
    return means[idx], stds[idx], torch.full((len(idx),), 1.0 / len(idx), dtype=torch.float64)


def estimator_fidelity(estimate: Tensor, truth: Tensor) -> dict[str, float]:
    """Density estimator against the true log density at the same points: mean absolute
    error (nats) and Spearman rank correlation; NaN for both when an estimate is not finite."""
    estimate, truth = estimate.double().flatten(), truth.double().flatten()
    if not bool(torch.isfinite(estimate).all()):
        return {"estimator_mae": float("nan"), "estimator_spearman": float("nan")}
    return {"estimator_mae": float((estimate - truth).abs().mean()), "estimator_spearman": spearman(estimate, truth)}
