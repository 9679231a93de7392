"""Evaluation of a trained model (a run or an export): sample quality, held-out likelihood,
image scores, and per-mode collapse detection (docs/math.md sections 4-5).

Everything works on a *model* that is either a :class:`fgm_core.run.Run` or an export runtime
(for example ``fgm_onnx.runtime.OnnxRuntimeModel``): both sample, encode and score in data units.

Metric definitions (all per held-out datum or per generated sample, data units):

- ``test_log_likelihood``: mean importance-sampled log p_theta(x), nats, K = ``k``.
- ``test_log_density``: mean of the density estimator's log p_D(x), nats.
- ``test_bits_per_dim`` / ``test_density_bits_per_dim`` (images): -mean / (D log 2).
- mixtures: the PacGAN protocol (:func:`fgm_report.metrics.mixture_metrics`) on ``n_samples``
  samples (``modes_captured``, ``high_quality``, ``kl_to_uniform``; the same on the generator
  means G(z) with the noise off: ``*_means``, since a Gaussian generator's noise scale alone
  can push noisy samples past Mahalanobis 3 of a std-0.01 mode), and ``optimum_log_likelihood`` = -H(mixture) (Monte Carlo, exact density), the best
  achievable ``test_log_likelihood``; ``likelihood_gap_to_optimum`` = optimum - model.
- images: ``sharpness`` = mean over images of the variance of the 4-neighbour Laplacian of the
  image scaled to [0, 1] (``data_sharpness`` for held-out data, the reference;
  ``sharpness_means`` for the generator means, since pixel noise alone raises the score);
  ``reconstruction_mse`` = mean squared error per dimension between x and G(mu_q(x)) with
  images scaled to [0, 1] (data units otherwise).
- images with labels: a local classifier (:mod:`fgm_report.classifier`, its
  ``classifier_accuracy`` on the test split reported); ``class_kl`` = KL(class histogram of
  samples || class histogram of held-out data), ``class_kl_to_uniform``; ``frechet_distance``
  between Gaussian fits of the classifier's penultimate features of samples and held-out data.

Mode collapse (:func:`mode_collapse`): see its docstring for the rule.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgm_core.api import open_export
from fgm_core.build import load_data
from fgm_core.config import validate
from fgm_core.errors import FGMError
from fgm_core.plugins import get_plugins
from fgm_core.run import Run
from fgm_report.classifier import Classifier, get_classifier
from fgm_report.metrics import mixture_log_density, mixture_metrics
from fgm_report.stats import esd_outliers

#: gap threshold in nats: the model gives a point at least e^T times less density than the
#: density estimator (T = log 10: a tenfold shortfall).
GAP_THRESHOLD = math.log(10.0)
#: a mode is missing by the gap when at least this share of its held-out points is above the threshold ...
GAP_SHARE = 0.5
#: ... and covered by the gap when at most this share is.
COVERED_SHARE = 0.2
#: the samples confirm a collapse when a mode's sample share is below this fraction of its data share.
SAMPLE_RATIO = 0.2
#: the gap counts as evidence only if its large values cluster by mode: a chi-square test of
#: homogeneity of the above-threshold share across modes must reject at this normal quantile
#: (3.09: one-sided p = 0.001); a gap unrelated to the modes (noise) does not pass it.
HOMOGENEITY_Z = 3.09
#: in the relative reading (see :func:`gap_reference`), the level of the outlier test on the
#: modes' median gaps (generalized ESD, Rosner's usual 0.05).
OUTLIER_ALPHA = 0.05
#: labelled data without a mixture: a sample takes the majority label of this many nearest held-out points.
NEIGHBOURS = 5


# --------------------------------------------------------------------------- opening models
def open_model(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """A run directory (torch :class:`Run`) or an export directory (its exporter's runtime);
    ``threads``: the runtime's threads, or torch's for a run."""
    path = Path(path)
    if not path.is_dir():
        raise FGMError(f"{path} is not a directory", "give a run directory or an export directory")
    if (path / "manifest.json").exists():
        return open_export(path, device=device, **({"threads": threads} if threads else {}))
    if not (path / "fgm.json").exists():
        raise FGMError(
            f"{path} is neither a run directory nor an export directory",
            "give the directory `fgm train` or `fgm export` wrote",
        )
    if threads:
        torch.set_num_threads(threads)
    return Run.load(path, device=device)


def model_config(model: Any):
    """The training configuration of a run or an export (from its manifest)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "data"):
        return cfg
    manifest = getattr(model, "manifest", None) or {}
    if not isinstance(manifest.get("config"), dict):
        raise FGMError(
            f"{getattr(model, 'path', '?')} records no training configuration",
            "re-export the run with this version of fgm",
        )
    return validate(manifest["config"], "manifest config")


def load_test_bundle(model: Any, data_options: dict[str, Any] | None = None, drop_options: tuple[str, ...] = ()):
    """Reload the model's dataset (train/test splits with labels) through its plugin.

    ``data_options`` override ``data.options``; ``drop_options`` removes keys (e.g. ``modes``
    to evaluate a model trained on some modes against the full mixture).
    """
    cfg = model_config(model).model_copy(deep=True)
    opts = {k: v for k, v in cfg.data.options.items() if k not in drop_options}
    opts.update(data_options or {})
    cfg.data.options = opts
    return load_data(cfg, get_plugins())


# --------------------------------------------------------------------------- a uniform view
class _View:
    """Torch tensors out of either a Run or an export runtime."""

    def __init__(self, model: Any) -> None:
        self.m = model
        self.is_run = hasattr(model, "model") and hasattr(model, "as_model_input")
        self.info = model.info
        self.shape = tuple(self.info.shape)
        self.dims = int(np.prod(self.shape))
        sc = self.info.scaling
        self.shift, self.scale = (sc.shift, sc.scale) if self.is_run else (sc["shift"], sc["scale"])
        self.critic_form = model.model.critic_form if self.is_run else model.critic_form
        self.generator = model.model.generator if self.is_run else model.generator

    def sample(self, n: int, seed: int, noise: bool = True) -> Tensor:
        return torch.as_tensor(np.asarray(self.m.sample(n, seed=seed, noise=noise))).float()

    def log_likelihood(self, x: Tensor, k: int, seed: int = 0) -> Tensor:
        return torch.as_tensor(np.asarray(self.m.log_likelihood(x.numpy(), k=k, seed=seed))).double()

    def log_density(self, x: Tensor, seed: int = 0) -> Tensor | None:
        try:
            return torch.as_tensor(np.asarray(self.m.log_density(x.numpy(), seed=seed))).double()
        except Exception as e:  # noqa: BLE001 - an export or critic without a density estimate
            if type(e).__name__ in ("FGMRuntimeError", "FGMError", "NotImplementedError"):
                return None
            raise

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        mu, _ = self.m.encode(x.numpy())
        if self.is_run:
            run = self.m
            z = torch.as_tensor(np.asarray(mu)).float().to(run.device)
            xm = run.model.generate(z, None)
            return run.info.scaling.to_data(xm).cpu().float()
        return torch.as_tensor(np.asarray(self.m.sample(z=np.asarray(mu, np.float32), noise=False))).float()

    def unit(self, x: Tensor) -> Tensor:
        """Images to [0, 1] (data units are shift + scale * [-1, 1])."""
        return ((x - self.shift) / self.scale + 1.0) / 2.0


# --------------------------------------------------------------------------- building blocks
def mixture_negative_entropy(
    means: Tensor, stds: Tensor, weights: Tensor | None = None, n: int = 200_000, seed: int = 0
) -> float:
    """-H(mixture) = E_p[log p(x)], Monte Carlo over ``n`` exact draws with the exact density."""
    means, stds = torch.as_tensor(means).double(), torch.as_tensor(stds).double()
    k = means.shape[0]
    w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    w = w / w.sum()
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(w, n, replacement=True, generator=g)
    x = means[comp] + stds[comp] * torch.randn(n, means.shape[1], generator=g, dtype=torch.float64)
    total = 0.0
    for i in range(0, n, 50_000):
        total += float(mixture_log_density(x[i : i + 50_000], means, stds, w).sum())
    return total / n


def separated_mixture_negative_entropy(stds: Tensor, weights: Tensor | None = None) -> float:
    """-H for a mixture of non-overlapping diagonal Gaussians: sum_k w_k (log w_k - H_k)."""
    stds = torch.as_tensor(stds).double()
    k, d = stds.shape
    w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    w = w / w.sum()
    h = 0.5 * d * math.log(2 * math.pi * math.e) + stds.log().sum(1)
    return float((w * (w.log() - h)).sum())


def sharpness(images: Tensor) -> float:
    """Mean over images of the variance of the 4-neighbour Laplacian ([0, 1] images)."""
    x = images.double().reshape(-1, *images.shape[-2:]) if images.dim() >= 3 else images.double()
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return float(lap.flatten(1).var(1).mean())


def kl_histograms(p_counts: Tensor, q_counts: Tensor, eps: float = 1e-6) -> float:
    """KL(p || q) of two count vectors, smoothed by ``eps`` so empty bins stay finite."""
    p = p_counts.double() + eps
    q = q_counts.double() + eps
    p, q = p / p.sum(), q / q.sum()
    return float((p * (p / q).log()).sum())


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between Gaussian fits of rows."""
    a, b = a.double(), b.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    # tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), computed symmetrically
    e1, v1 = torch.linalg.eigh(s1)
    r1 = (v1 * e1.clamp_min(0).sqrt()) @ v1.T
    m = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt)


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 30) -> tuple[Tensor, Tensor]:
    """Seeded k-means (k-means++ start, Lloyd steps): (centers (k, D), labels (N,))."""
    x = x.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    k = min(k, x.shape[0])
    centers = x[torch.randint(x.shape[0], (1,), generator=g)]
    for _ in range(1, k):
        d = torch.cdist(x, centers).min(1).values ** 2
        p = d / d.sum() if d.sum() > 0 else torch.full_like(d, 1.0 / len(d))
        centers = torch.cat([centers, x[torch.multinomial(p, 1, generator=g)]])
    labels = torch.cdist(x, centers).argmin(1)
    for _ in range(iters):
        new = torch.stack([x[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        new_labels = torch.cdist(x, new).argmin(1)
        centers = new
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centers, labels


# --------------------------------------------------------------------------- modes
class _Modes:
    """How held-out points and samples are assigned to modes."""

    def __init__(
        self,
        view: _View,
        bundle: Any,
        test: Tensor,
        test_labels: Tensor | None,
        classifier: Any,
        n_clusters: int,
        seed: int,
    ) -> None:
        self.view = view
        info = view.info
        mixture = info.mixture
        self.classifier = classifier
        if mixture is not None:
            self.kind = "mixture component"
            self.means = torch.tensor(mixture["means"], dtype=torch.float64)
            self.stds = torch.tensor(mixture["stds"], dtype=torch.float64)
            self.names = [f"mode-{i}" for i in range(len(self.means))]
            dm = torch.cdist(self.means, self.means) + torch.eye(len(self.means)) * 1e9
            #: a sample belongs to a mode when it is within half the smallest inter-mode distance
            self.radius = 0.5 * float(dm.min())
            self.test_modes = test_labels if test_labels is not None else self.assign(test)
        elif test_labels is not None:
            self.kind = "class"
            #: without a classifier, samples take the labels of their nearest labelled held-out points
            self.ref, self.ref_labels = test.flatten(1).double(), test_labels.long()
            k = int(max(int(test_labels.max()) + 1, len(info.label_names or [])))
            self.names = list(info.label_names or [])[:k] or [f"class-{i}" for i in range(k)]
            self.names += [f"class-{i}" for i in range(len(self.names), k)]
            self.test_modes = test_labels.long()
        else:
            self.kind = "cluster"
            flat = test.flatten(1)
            self.centers, self.test_modes = kmeans(flat, n_clusters, seed=seed)
            self.names = [f"cluster-{i}" for i in range(len(self.centers))]

    def assign(self, x: Tensor) -> Tensor:
        """Mode index per row; -1 (none) when no mode claims it."""
        if self.kind == "mixture component":
            d = torch.cdist(x.double(), self.means)
            dist, idx = d.min(1)
            return torch.where(dist < self.radius, idx, torch.full_like(idx, -1))
        if self.kind == "class":
            if self.classifier is not None:
                return self.classifier.predict(x)
            k = min(NEIGHBOURS, self.ref.shape[0])
            near = torch.cdist(x.double().flatten(1), self.ref).topk(k, largest=False).indices
            return torch.mode(self.ref_labels[near], dim=1).values
        return torch.cdist(x.double().flatten(1), self.centers).argmin(1)


def gap_is_informative(counts: list[tuple[int, int]], z: float = HOMOGENEITY_Z) -> bool:
    """Whether the share of above-threshold gaps differs between modes beyond chance.

    ``counts``: (points, points above the threshold) per mode. Chi-square test of homogeneity
    (Wilson-Hilferty approximation of the critical value at the normal quantile ``z``).
    """
    n = sum(c for c, _ in counts)
    k = sum(e for _, e in counts)
    if len(counts) < 2 or n == 0 or k in (0, n):
        return False
    p = k / n
    x2 = sum((e - c * p) ** 2 / (c * p * (1 - p)) for c, e in counts)
    df = len(counts) - 1
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return x2 > crit


def gap_reference(
    per_point_gap: Tensor, test_modes: Tensor, k: int, threshold: float, alpha: float = OUTLIER_ALPHA
) -> tuple[float, float, list[int] | None]:
    """(offset, threshold, modes missing by the relative reading or None) for reading the gap.

    When the median mode's median gap is within ``threshold`` of 0, the estimator and the
    likelihood agree where the model covers the data: the gap is read as it is (offset 0, no
    list: each mode's gap share decides). Otherwise every mode is off by a common offset that
    says nothing about coverage (in high dimension both log-densities are off by hundreds of
    nats, by an amount that differs from mode to mode): the missing modes are those whose
    median gaps the generalized ESD test (:func:`fgm_report.stats.esd_outliers`, level
    ``alpha``) finds too far above the rest to belong with them, offset = the mean of the rest's medians
    and threshold = how far above it the next outlier would have to lie. Both readings assume
    that fewer than half the modes are missing.
    """
    present = [m for m in range(k) if bool((test_modes == m).any())]
    if not present:
        return 0.0, threshold, None
    medians = [float(per_point_gap[test_modes == m].median()) for m in present]
    if abs(statistics.median(medians)) <= threshold:
        return 0.0, threshold, None
    outliers, center, critical = esd_outliers(medians, alpha, (len(medians) - 1) // 2)
    missing = [present[i] for i in outliers if medians[i] > center]  # far below the rest: covered
    # no mode left to test after the last outlier: no finite threshold
    return center, critical if math.isfinite(critical) else math.inf, missing


def mode_collapse(
    per_point_gap: Tensor | None,
    test_modes: Tensor,
    sample_modes: Tensor,
    names: list[str],
    threshold: float = GAP_THRESHOLD,
    sample_ratio: float = SAMPLE_RATIO,
    gap_share: float = GAP_SHARE,
    covered_share: float = COVERED_SHARE,
    use_samples: bool = True,
    log_likelihood: Tensor | None = None,
    kind: str = "mode",
) -> dict[str, Any]:
    """Per-mode collapse report; the gap g(x) = log p_D(x) - log p_theta(x) is the evidence.

    For each mode m (held-out points grouped by ``test_modes``; samples by ``sample_modes``,
    -1 = in no mode): ``mean_gap``, ``gap_share`` (share of its held-out points with g(x) >
    ``threshold``), ``data_share``, ``sample_share`` and ``sample_ratio`` = sample_share /
    data_share, and a ``verdict``:

    0. The reading (:func:`gap_reference`): the gap as it is when the median mode's median gap
       is within ``threshold`` of 0; else relative, by an outlier test on the modes' median gaps.
    1. The gap's reading. As it is: *missing* when gap_share >= ``gap_share`` (0.5) and the gap
       is informative (:func:`gap_is_informative`: its large values cluster by mode; a gap
       unrelated to the modes, such as noise, is not); *covered* when gap_share <=
       ``covered_share`` (0.2); otherwise *unclear*. Relative: *missing* for the modes the
       outlier test names, *covered* for the rest (gap_share is then measured above the
       offset plus the relative threshold). No gap (no density estimator): unclear.
    2. The samples' reading (``use_samples``): *few* when sample_ratio < ``sample_ratio`` (0.2).
    3. ``collapsed`` when the gap says missing and the samples do not contradict it (few, or
       ``use_samples`` off); ``covered`` when the gap says covered and the samples do not
       contradict it (not few); ``uncertain`` otherwise (the two disagree, or the gap is
       unclear). Samples alone never make a mode collapsed.
    """
    k = len(names)
    n_test = max(int(test_modes.numel()), 1)
    n_samp = max(int(sample_modes.numel()), 1)
    offset, flagged = 0.0, None
    if per_point_gap is not None:
        offset, threshold, flagged = gap_reference(per_point_gap, test_modes, k, threshold)
    rows = []
    counts = []
    for m in range(k):
        sel = test_modes == m
        cnt = int(sel.sum())
        if cnt == 0:
            continue
        data_share = cnt / n_test
        s_share = float((sample_modes == m).sum()) / n_samp
        row: dict[str, Any] = {
            "mode": m,
            "name": names[m],
            "test_points": cnt,
            "data_share": data_share,
            "sample_share": s_share,
            "sample_ratio": s_share / data_share,
        }
        if per_point_gap is not None:
            g = per_point_gap[sel]
            row["mean_gap"] = float(g.mean())
            row["median_gap"] = float(g.median())
            above = int((g - offset > threshold).sum())
            row["gap_share"] = above / cnt
            counts.append((cnt, above))
        if log_likelihood is not None:
            row["mean_log_likelihood"] = float(log_likelihood[sel].mean())
        rows.append(row)
    informative = gap_is_informative(counts) if per_point_gap is not None else None
    for row in rows:
        share = row.get("gap_share")
        if share is None:
            gap_says = "unclear"
        elif flagged is not None:
            gap_says = "missing" if row["mode"] in flagged else "covered"
        elif share >= gap_share and informative:
            gap_says = "missing"
        elif share <= covered_share:
            gap_says = "covered"
        else:
            gap_says = "unclear"
        few = use_samples and row["sample_ratio"] < sample_ratio
        if gap_says == "missing" and (few or not use_samples):
            verdict = "collapsed"
        elif gap_says == "covered" and not few:
            verdict = "covered"
        else:
            verdict = "uncertain"
        row["gap_says"] = gap_says
        row["verdict"] = verdict
        row["collapsed"] = verdict == "collapsed"
    collapsed = [r["mode"] for r in rows if r["verdict"] == "collapsed"]
    uncertain = [r["mode"] for r in rows if r["verdict"] == "uncertain"]
    return {
        "kind": kind,
        "modes": rows,
        "collapsed": collapsed,
        "collapsed_names": [names[m] for m in collapsed],
        "uncertain": uncertain,
        "uncertain_names": [names[m] for m in uncertain],
        "gap_informative": informative,
        "unassigned_sample_share": float((sample_modes < 0).sum()) / n_samp,
        "rule": {
            "gap_threshold_nats": threshold if math.isfinite(threshold) else None,  # None: no mode left to test
            "gap_offset_nats": offset,
            "relative": flagged is not None,
            "outlier_alpha": OUTLIER_ALPHA if flagged is not None else None,
            "gap_share": gap_share,
            "covered_share": covered_share,
            "sample_ratio": sample_ratio if use_samples else None,
            "homogeneity_z": HOMOGENEITY_Z,
        },
    }


# --------------------------------------------------------------------------- evaluate
def evaluate(
    model: Any,
    bundle: Any = None,
    *,
    k: int = 100,
    n_samples: int = 2500,
    n_test: int = 2000,
    threshold: float = GAP_THRESHOLD,
    seed: int = 0,
    classifier: bool | Any = True,
    n_clusters: int = 10,
    collapse: bool = True,
    reference: Any = None,
) -> dict[str, Any]:
    """All metrics of the module docstring, plus ``mode_collapse`` (a dict) when ``collapse``.

    ``model``: a Run, an export runtime or a path to either. ``bundle``: the held-out data
    (default: reloaded from the model's recorded config). ``classifier``: True (train or
    load the cached one), False, or a :class:`fgm_report.classifier.Classifier`.
    ``reference``: a model of the same data trained on all of it (Run, export or path). The
    collapse detector then reads both gaps against one density estimate, which cancels:
    g(x) - g_ref(x) = log p_ref(x) - log p_theta(x), the model's likelihood deficit on the same
    held-out points. What a mode's data do to every model's log-density (in high dimension,
    hundreds of nats that differ by mode) cancels too; so does the density estimator's error,
    which in high dimension differs between two estimators of the same data by up to a hundred
    nats or more per mode and says nothing about coverage (the estimator's optimum, log p_D,
    does not depend on the model).
    """
    t0 = time.perf_counter()
    if isinstance(model, (str, Path)):
        model = open_model(model)
    if bundle is None:
        bundle = load_test_bundle(model)
    v = _View(model)
    if tuple(bundle.test.shape[1:]) != v.shape:
        raise FGMError(
            f"test data has shape {tuple(bundle.test.shape[1:])}, the model expects {v.shape}",
            "evaluate against the dataset the model was trained on",
        )
    if reference is not None and collapse and v.generator != "gaussian":
        raise FGMError(
            "the model has a deterministic generator, so no likelihood to compare with the reference's",
            "evaluate a model trained with model.generator = gaussian, or drop --reference",
        )
    out: dict[str, Any] = {"dataset": v.info.dataset, "critic": v.critic_form, "k": k, "n_samples": n_samples}
    gen = torch.Generator().manual_seed(seed)
    n = min(n_test, bundle.test.shape[0])
    idx = torch.randperm(bundle.test.shape[0], generator=gen)[:n]
    test = bundle.test[idx].float()
    labels = bundle.test_labels[idx] if bundle.test_labels is not None else None
    out["n_test"] = n
    samples = v.sample(n_samples, seed=seed + 1)
    is_image = len(v.shape) == 3

    # likelihood
    ll = v.log_likelihood(test, k=k, seed=seed) if v.generator == "gaussian" else None
    ld = v.log_density(test, seed=seed)
    if ll is not None:
        out["test_log_likelihood"] = float(ll.mean())
    if ld is not None:
        out["test_log_density"] = float(ld.mean())
    if is_image:
        for key in ("test_log_likelihood", "test_log_density"):
            if key in out:
                out[key.replace("log_likelihood", "bits_per_dim").replace("log_density", "density_bits_per_dim")] = (
                    -out[key] / (v.dims * math.log(2))
                )

    # mixtures
    if v.info.mixture is not None:
        mix = v.info.mixture
        out.update(mixture_metrics(samples, torch.tensor(mix["means"]), torch.tensor(mix["stds"])))
        if v.generator == "gaussian":  # the same protocol on the generator means G(z), noise off
            mm = mixture_metrics(
                v.sample(n_samples, seed=seed + 1, noise=False), torch.tensor(mix["means"]), torch.tensor(mix["stds"])
            )
            out.update({f"{key}_means": mm[key] for key in ("modes_captured", "high_quality", "kl_to_uniform")})
        w = torch.tensor(mix["weights"]) if mix.get("weights") is not None else None
        out["optimum_log_likelihood"] = mixture_negative_entropy(
            torch.tensor(mix["means"]), torch.tensor(mix["stds"]), w
        )
        if ll is not None:
            out["likelihood_gap_to_optimum"] = out["optimum_log_likelihood"] - out["test_log_likelihood"]

    # reconstruction, images
    rec = v.reconstruct(test[: min(n, 1000)])
    ref = test[: min(n, 1000)]
    if is_image:
        out["reconstruction_mse"] = float(((v.unit(rec) - v.unit(ref)) ** 2).mean())
        out["sharpness"] = sharpness(v.unit(samples[:1000]))
        if v.generator == "gaussian":  # pixel noise inflates the Laplacian: also score G(z)
            out["sharpness_means"] = sharpness(v.unit(v.sample(min(n_samples, 1000), seed=seed + 1, noise=False)))
        out["data_sharpness"] = sharpness(v.unit(test[:1000]))
    else:
        out["reconstruction_mse"] = float(((rec - ref) ** 2).mean())

    clf = None
    if is_image and labels is not None and classifier is not False:
        clf = classifier if isinstance(classifier, Classifier) else get_classifier(bundle, model_config(model))
        out["classifier_accuracy"] = clf.accuracy
        out["classifier_cached"] = clf.cached
        kcls = clf.n_classes
        pred = clf.predict(samples)
        sc = torch.bincount(pred, minlength=kcls)
        dc = torch.bincount(bundle.test_labels.long(), minlength=kcls)
        out["class_kl"] = kl_histograms(sc, dc)
        out["class_kl_to_uniform"] = kl_histograms(sc, torch.ones(kcls))
        out["frechet_distance"] = frechet_distance(clf.features(samples), clf.features(test))

    if collapse:
        modes = _Modes(v, bundle, test, labels, clf, n_clusters, seed)
        gap: Tensor | None = (ld - ll) if (ld is not None and ll is not None) else None
        if reference is not None:
            # both gaps read against one density estimate, which cancels: g - g_ref = log p_ref - log p_theta
            gap = reference_log_likelihood(reference, test, v.shape, k, seed) - ll  # type: ignore[operator]
        mc = mode_collapse(
            gap,
            modes.test_modes,
            modes.assign(samples),
            modes.names,
            threshold=threshold,
            log_likelihood=ll,
            kind=modes.kind,
        )
        if reference is not None:
            mc["reference"] = str(getattr(reference, "path", reference))
        out["mode_collapse"] = mc
        out["modes_collapsed"] = len(mc["collapsed"])
        out["modes_uncertain"] = len(mc["uncertain"])
    out["eval_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def reference_log_likelihood(reference: Any, test: Tensor, shape: tuple[int, ...], k: int, seed: int) -> Tensor:
    """log p_ref(x) of the reference model on the same held-out points (K = ``k``)."""
    ref = _View(open_model(reference) if isinstance(reference, (str, Path)) else reference)
    if ref.shape != shape:
        raise FGMError(
            f"the reference model takes data of shape {ref.shape}, the model {shape}",
            "give a reference trained on the same dataset (all of it)",
        )
    if ref.generator != "gaussian":
        raise FGMError(
            "the reference model has a deterministic generator, so no likelihood to compare with",
            "give a reference trained with model.generator = gaussian",
        )
    return ref.log_likelihood(test, k=k, seed=seed)


def format_report(res: dict[str, Any]) -> str:
    """Human-readable lines for ``fgm evaluate``."""
    lines = [
        f"dataset {res['dataset']}, critic {res['critic']}, {res['n_test']} held-out points, "
        f"{res['n_samples']} samples, K={res['k']}"
    ]
    if "modes_captured" in res:
        lines.append(
            f"modes captured {res['modes_captured']}/{res['modes_total']}, high-quality "
            f"{100 * res['high_quality']:.1f}%, KL(modes || uniform) {res['kl_to_uniform']:.4f}"
        )
    if "modes_captured_means" in res:
        lines.append(
            f"  generator means (noise off): modes {res['modes_captured_means']}/{res['modes_total']}, "
            f"high-quality {100 * res['high_quality_means']:.1f}%, KL {res['kl_to_uniform_means']:.4f}"
        )
    if "test_log_likelihood" in res:
        s = f"test log-likelihood {res['test_log_likelihood']:.3f} nats"
        if "optimum_log_likelihood" in res:
            s += f" (optimum -H = {res['optimum_log_likelihood']:.3f}, gap {res['likelihood_gap_to_optimum']:.3f})"
        if "test_bits_per_dim" in res:
            s += f", {res['test_bits_per_dim']:.4f} bits/dim"
        lines.append(s)
    if "test_log_density" in res:
        s = f"density estimator log p_D: {res['test_log_density']:.3f} nats"
        if "test_density_bits_per_dim" in res:
            s += f", {res['test_density_bits_per_dim']:.4f} bits/dim"
        lines.append(s)
    lines.append(f"reconstruction MSE {res['reconstruction_mse']:.6g}")
    if "sharpness" in res:
        extra = f", generator means {res['sharpness_means']:.5f}" if "sharpness_means" in res else ""
        lines.append(f"sharpness {res['sharpness']:.5f} (data {res['data_sharpness']:.5f}{extra})")
    if "classifier_accuracy" in res:
        lines.append(
            f"classifier test accuracy {100 * res['classifier_accuracy']:.1f}%: class KL {res['class_kl']:.4f}, "
            f"KL to uniform {res['class_kl_to_uniform']:.4f}, Frechet distance {res['frechet_distance']:.4f}"
        )
    mc = res.get("mode_collapse")
    if mc:
        lines.append(f"modes ({mc['kind']}): {'name':>16} {'data%':>6} {'samp%':>6} {'gap':>8} {'gap>T%':>7}")
        for r in mc["modes"]:
            gap = f"{r['mean_gap']:8.2f}" if "mean_gap" in r else f"{'-':>8}"
            gs = f"{100 * r['gap_share']:7.1f}" if "gap_share" in r else f"{'-':>7}"
            flag = {"collapsed": "  COLLAPSED", "uncertain": "  uncertain"}.get(r["verdict"], "")
            lines.append(
                f"  {r['name']:>30} {100 * r['data_share']:6.1f} {100 * r['sample_share']:6.1f} {gap} {gs}{flag}"
            )
        lines.append(
            "collapsed: "
            + (", ".join(mc["collapsed_names"]) if mc["collapsed"] else "none")
            + ("; uncertain: " + ", ".join(mc["uncertain_names"]) if mc["uncertain"] else "")
        )
        rule = mc["rule"]
        if rule.get("relative"):
            lines.append(
                f"gap read relative to the modes' medians: offset {rule['gap_offset_nats']:.1f} nats, outliers by the "
                f"generalized ESD test at level {rule['outlier_alpha']}"
                + (
                    f" (next threshold {rule['gap_threshold_nats']:.1f} nats)"
                    if rule["gap_threshold_nats"] is not None
                    else ""
                )
            )
        elif mc["gap_informative"] is False:
            lines.append("the gap log p_D - log p_theta does not separate the modes: it decides nothing here")
        if "reference" in mc:
            lines.append(
                f"gap read against the reference {mc['reference']} (the model's gap minus the reference's over one "
                "density estimate: log p_ref - log p_theta)"
            )
    return "\n".join(lines)
