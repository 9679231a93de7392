"""Evaluation (`fgm evaluate`), mode-collapse detection, `fgm plot` and `fgm compare`.

Tiny budgets: one thread per run, small MLPs, few steps. The mode-collapse test trains a VAE
(kl) on five of ring8's eight modes and checks that the detector names exactly the other three.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fgm_core as fgm
from fgm_core.errors import FGMError
from fgm_report.evaluate import (
    evaluate,
    frechet_distance,
    kmeans,
    load_test_bundle,
    mixture_negative_entropy,
    mode_collapse,
    separated_mixture_negative_entropy,
)
from fgm_report.metrics import mixture_metrics

FGM = str(Path(sys.executable).parent / "fgm")
SMALL_MLP = {"hidden": 32, "depth": 2}


def cfg(out: Path, name: str, data: dict, steps: int = 100, **extra) -> dict:
    c = {
        "data": data,
        "model": {"latent_dim": 2, "options": SMALL_MLP},
        "divergence": {"name": "kl"},
        "optim": {"batch_size": 128, "schedule": "constant"},
        "run": {"steps": steps, "out_dir": str(out), "progress": False, "tensorboard": False, "threads": 1,
                "eval_samples": 200, "name": name, "checkpoint_every": 100000},
    }
    for k, v in extra.items():
        c[k] = {**c.get(k, {}), **v}
    return c


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    old = os.environ.get("FGM_CACHE_DIR")
    os.environ["FGM_CACHE_DIR"] = str(d / "cache")
    yield d
    if old is None:
        os.environ.pop("FGM_CACHE_DIR", None)
    else:
        os.environ["FGM_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def ring_run(workdir):
    return fgm.train(cfg(workdir / "runs", "ring", {"dataset": "ring8", "options": {"n_train": 4000, "n_test": 400}},
                         steps=150), progress=False)


# --------------------------------------------------------------------------- building blocks
def test_mixture_metrics_on_hand_made_samples():
    a = 2 * math.pi * torch.arange(8) / 8
    means = torch.stack([a.cos(), a.sin()], 1)
    stds = torch.full((8, 2), 0.01)
    s = torch.cat([
        means[0].repeat(3, 1),                          # 3 high-quality at mode 0
        means[1].repeat(2, 1) + torch.tensor([0.02, 0.0]),  # Mahalanobis 2 < 3: high quality, mode 1
        means[2][None] + torch.tensor([0.05, 0.0]),     # 5 > 3: not high quality
        torch.zeros(1, 2),                              # far from everything
    ])
    m = mixture_metrics(s, means, stds)
    assert m["modes_captured"] == 2 and m["modes_total"] == 8 and m["samples"] == 7
    assert m["high_quality"] == pytest.approx(5 / 7)
    p = torch.tensor([3 / 5, 2 / 5])
    assert m["kl_to_uniform"] == pytest.approx(math.log(8) + float((p * p.log()).sum()))


def test_negative_entropy_of_ring8_numeric_matches_analytic():
    a = 2 * math.pi * torch.arange(8) / 8
    means = torch.stack([a.cos(), a.sin()], 1)
    stds = torch.full((8, 2), 0.01)
    numeric = mixture_negative_entropy(means, stds, n=100_000)
    analytic = separated_mixture_negative_entropy(stds)
    assert analytic == pytest.approx(-(math.log(8) + math.log(2 * math.pi * math.e) + 2 * math.log(0.01)))
    assert numeric == pytest.approx(analytic, abs=0.02)


def test_mode_collapse_rule():
    test_modes = torch.arange(4).repeat_interleave(100)
    gap = torch.zeros(400, dtype=torch.float64)
    gap[300:] = 10.0  # mode 3: the model misses the points the estimator knows
    samples = torch.cat([torch.zeros(300), torch.ones(300), torch.full((300,), 2), torch.full((10,), 3),
                         torch.full((90,), -1)]).long()
    r = mode_collapse(gap, test_modes, samples, ["a", "b", "c", "d"])
    assert r["collapsed"] == [3] and r["collapsed_names"] == ["d"] and r["uncertain"] == []
    assert r["gap_informative"] is True and [m["verdict"] for m in r["modes"]] == ["covered"] * 3 + ["collapsed"]
    assert r["modes"][3]["gap_share"] == 1.0 and r["modes"][3]["sample_ratio"] == pytest.approx(0.04)
    assert r["unassigned_sample_share"] == pytest.approx(0.09)
    # samples alone never make a collapse: few samples but a small gap is uncertain
    r0 = mode_collapse(torch.zeros(400, dtype=torch.float64), test_modes, samples, list("abcd"))
    assert r0["collapsed"] == [] and r0["uncertain"] == [3]
    # nor does having no gap at all (no density estimator)
    assert mode_collapse(None, test_modes, samples, list("abcd"))["collapsed"] == []
    # a large gap that the samples contradict (plenty of samples in mode 3): uncertain
    plenty = torch.arange(4).repeat_interleave(250)
    assert mode_collapse(gap, test_modes, plenty, list("abcd"))["uncertain"] == [3]
    # the gap alone (sample rule off) names mode 3
    assert mode_collapse(gap, test_modes, plenty, list("abcd"), use_samples=False)["collapsed"] == [3]


def test_a_common_offset_of_the_gap_is_read_relative_to_the_median_mode():
    """In high dimension log p_D and log p_theta are both off by hundreds of nats, so every mode's
    gap is far above log 10 (measured on Fashion-MNIST: class medians 240-500 nats for covered
    classes, 820-1610 for removed ones, per-point spread about 400). Read as it is, the gap calls
    every mode missing; read relative to the modes' medians (an outlier test), it names exactly
    the removed ones."""
    g = torch.Generator().manual_seed(0)
    effect = torch.tensor([-60.0, 700.0, 10.0, 0.0, -20.0, 900.0, -50.0, 20.0, 1300.0, 150.0], dtype=torch.float64)
    modes = torch.arange(10).repeat_interleave(200)
    gap = 350.0 + effect[modes] + 300.0 * torch.randn(2000, generator=g, dtype=torch.float64)
    names = [f"class-{i}" for i in range(10)]
    r = mode_collapse(gap, modes, modes, names, use_samples=False)
    assert r["collapsed"] == [1, 5, 8]
    says = {m["mode"]: m["gap_says"] for m in r["modes"]}
    assert [m for m, v in says.items() if v == "missing"] == [1, 5, 8] and r["uncertain"] == []
    # offset: the mean of the seven others' medians (350 + 50/7 nats, give or take the noise)
    assert r["rule"]["relative"] is True and r["rule"]["outlier_alpha"] == 0.05
    assert 330 < r["rule"]["gap_offset_nats"] < 390
    # the same gaps with the offset removed by hand (the median mode now agrees within log 10):
    # read as they are, with the fixed threshold, and the same three stand out
    medians = torch.stack([gap[modes == m].median() for m in range(10)])
    shifted = gap - float(medians.sort().values[4:6].mean())
    r0 = mode_collapse(shifted, modes, modes, names, use_samples=False)
    assert r0["rule"]["relative"] is False and r0["rule"]["gap_offset_nats"] == 0.0
    assert set(r0["collapsed"]) >= {1, 5, 8}
    # a gap of pure noise around a large offset names nothing
    noise = 350.0 + 300.0 * torch.randn(2000, generator=g, dtype=torch.float64)
    assert mode_collapse(noise, modes, modes, names, use_samples=False)["collapsed"] == []
    # one covered mode that happens to sit at 0 does not make the reading absolute (the median mode decides)
    at_zero = gap.clone()
    at_zero[modes == 6] -= float(at_zero[modes == 6].median())
    r1 = mode_collapse(at_zero, modes, modes, names, use_samples=False)
    assert r1["rule"]["relative"] is True and r1["collapsed"] == [1, 5, 8]
    # one mode far *below* the rest is an outlier too, but not missing (the model covers it best),
    # and it does not hide the three above
    low = gap.clone()
    low[modes == 3] -= 2000.0
    assert mode_collapse(low, modes, modes, names, use_samples=False)["collapsed"] == [1, 5, 8]


def test_the_relative_reading_scales_with_the_spread_of_the_covered_modes():
    """The relative threshold follows the covered modes' spread, not the missing modes': the
    same three removed classes are named when the covered classes' medians spread over 10 nats
    or over 150, with the removed ones 5 and 4 spreads above them (measured on Fashion-MNIST
    with a reference: covered -80..+4 nats, removed 230-640)."""
    names = [f"class-{i}" for i in range(10)]
    modes = torch.arange(10).repeat_interleave(200)
    g = torch.Generator().manual_seed(3)
    base = torch.tensor([-1.0, 0.0, 0.6, -0.4, 1.1, 0.0, -0.8, 0.3, 0.0, 0.5], dtype=torch.float64)
    for spread in (10.0, 150.0):
        centre = base * spread
        centre[[1, 5, 8]] = torch.tensor([5.0, 4.0, 6.0], dtype=torch.float64) * spread
        gap = 400.0 + centre[modes] + 0.2 * spread * torch.randn(2000, generator=g, dtype=torch.float64)
        r = mode_collapse(gap, modes, modes, names, use_samples=False)
        assert r["collapsed"] == [1, 5, 8], (spread, r["rule"])
        # the threshold is a few covered spreads, whatever the scale
        assert 1.0 * spread < r["rule"]["gap_threshold_nats"] < 4.0 * spread


def test_the_relative_reading_with_few_modes_stays_valid_json():
    """Three modes leave no step after the first outlier: the next threshold is unknown (None,
    never Infinity in the JSON) and the outlier is still named."""
    modes = torch.arange(3).repeat_interleave(50)
    gap = torch.tensor([500.0, 500.5, 5000.0], dtype=torch.float64)[modes]
    r = mode_collapse(gap, modes, modes, ["a", "b", "c"], use_samples=False)
    assert r["collapsed"] == [2] and r["rule"]["relative"] is True
    assert r["rule"]["gap_threshold_nats"] is None
    json.dumps(r, allow_nan=False)
    # two modes: nothing can be tested, nothing is named
    two = mode_collapse(gap[:100], modes[:100], modes[:100], ["a", "b"], use_samples=False)
    assert two["collapsed"] == [] and two["rule"]["relative"] is True


def _ring8_without(removed: list[int], n_test: int = 2000, n_samples: int = 2500, seed: int = 0):
    """ring8 held-out data, an exact 'model' (the mixture of the kept modes) and an exact
    'estimator' (the full mixture): the per-point gap, the data's modes and the samples' modes."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    std = 0.05
    kept = [m for m in range(8) if m not in removed]

    def log_mix(x, comps):
        d = ((x[:, None, :] - means[comps][None]) ** 2).sum(-1)
        return torch.logsumexp(-0.5 * d / std ** 2 - math.log(2 * math.pi * std ** 2), 1) - math.log(len(comps))

    modes = torch.randint(0, 8, (n_test,), generator=g)
    x = means[modes] + std * torch.randn(n_test, 2, generator=g, dtype=torch.float64)
    gap = log_mix(x, list(range(8))) - log_mix(x, kept)
    sample_modes = torch.tensor(kept)[torch.randint(0, len(kept), (n_samples,), generator=g)]
    return gap, modes, sample_modes


def test_the_gap_alone_names_the_removed_modes():
    gap, modes, samples = _ring8_without([5, 6, 7])
    names = [f"mode-{i}" for i in range(8)]
    for use_samples in (True, False):
        r = mode_collapse(gap, modes, samples, names, use_samples=use_samples)
        assert r["collapsed"] == [5, 6, 7] and r["uncertain"] == [], (use_samples, r["modes"])
    # a gap that says nothing about the modes (the same values, shuffled): no collapse is claimed
    noise = gap[torch.randperm(gap.numel(), generator=torch.Generator().manual_seed(1))]
    for use_samples in (True, False):
        r = mode_collapse(noise, modes, samples, names, use_samples=use_samples)
        assert r["gap_informative"] is False and r["collapsed"] == [], (use_samples, r["modes"])
        assert set(r["uncertain"]) >= {5, 6, 7}
    # Gaussian noise of the same scale around the gap's mean (far from 0): read relative to the
    # modes, no mode stands out
    noise = torch.randn(gap.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * gap.std()
    r = mode_collapse(noise + gap.mean(), modes, samples, names, use_samples=False)
    assert r["rule"]["relative"] is True and r["collapsed"] == []


def test_kmeans_and_frechet():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 2, generator=g) * 0.1 + c for c in (torch.tensor([0.0, 0.0]), torch.tensor([5.0, 5.0]))])
    centers, labels = kmeans(x, 2, seed=0)
    assert sorted(torch.bincount(labels).tolist()) == [200, 200]
    a = torch.randn(2000, 3, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- evaluate
def _finite(res: dict, keys: list[str]) -> None:
    for k in keys:
        assert k in res, k
        assert math.isfinite(res[k]), (k, res[k])


def test_evaluate_ring8(ring_run):
    res = evaluate(ring_run, k=10, n_samples=500, n_test=300)
    _finite(res, ["modes_captured", "high_quality", "high_quality_means", "test_log_likelihood", "test_log_density",
                  "optimum_log_likelihood", "likelihood_gap_to_optimum", "reconstruction_mse"])
    assert res["modes_total"] == 8 and res["n_test"] == 300
    assert res["optimum_log_likelihood"] == pytest.approx(4.296, abs=0.02)
    mc = res["mode_collapse"]
    assert mc["kind"] == "mixture component" and len(mc["modes"]) == 8
    json.dumps(res)  # JSON-serialisable


def test_evaluate_grid25(workdir):
    run = fgm.train(cfg(workdir / "runs", "grid", {"dataset": "grid25", "options": {"n_train": 2000, "n_test": 300}},
                        steps=30), progress=False)
    res = evaluate(run, k=5, n_samples=300, n_test=200)
    _finite(res, ["high_quality", "test_log_likelihood", "test_log_density", "optimum_log_likelihood"])
    assert res["modes_total"] == 25 and len(res["mode_collapse"]["modes"]) <= 25


def test_evaluate_shapes_with_classifier(workdir):
    run = fgm.train(cfg(workdir / "runs", "shapes", {"dataset": "shapes", "options": {"n_train": 800, "n_test": 160}},
                        steps=20, model={"options": {"hidden": 32, "depth": 1}}), progress=False)
    res = evaluate(run, k=4, n_samples=200, n_test=160)
    _finite(res, ["test_log_likelihood", "test_bits_per_dim", "test_log_density", "reconstruction_mse", "sharpness",
                  "data_sharpness", "sharpness_means", "classifier_accuracy", "class_kl", "class_kl_to_uniform", "frechet_distance"])
    assert 0.0 <= res["classifier_accuracy"] <= 1.0 and res["classifier_cached"] is False
    assert res["mode_collapse"]["kind"] == "class" and len(res["mode_collapse"]["modes"]) == 8
    assert list((Path(os.environ["FGM_CACHE_DIR"]) / "classifiers").glob("*.safetensors"))
    again = evaluate(run, k=4, n_samples=200, n_test=160)
    assert again["classifier_cached"] is True and again["classifier_accuracy"] == res["classifier_accuracy"]
    assert again["frechet_distance"] == pytest.approx(res["frechet_distance"])


def test_evaluate_clusters_without_labels(ring_run):
    bundle = load_test_bundle(ring_run)
    bundle.test_labels = None
    info = ring_run.info
    ring_run.info = type(info)(info.dataset, info.shape, info.kind, info.scaling, None, None)
    try:
        res = evaluate(ring_run, bundle, k=5, n_samples=300, n_test=200, n_clusters=8)
    finally:
        ring_run.info = info
    assert res["mode_collapse"]["kind"] == "cluster" and len(res["mode_collapse"]["modes"]) == 8
    assert "modes_captured" not in res


def test_labelled_array_without_a_mixture_assigns_samples_by_nearest_neighbours(workdir, ring_run):
    """Labels but no mixture (an `array` dataset): samples take their nearest labelled
    neighbours' label, so modes the samples cover are never all reported collapsed."""
    import numpy as np

    g = np.random.default_rng(0)
    t = g.uniform(0, math.pi, 3000)
    y = g.integers(0, 2, 3000)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)) + 0.05 * g.standard_normal((3000, 2))
    path = workdir / "moons.npz"
    np.savez(path, x=x.astype(np.float32), y=y)
    run = fgm.train(cfg(workdir / "runs", "moons", {"dataset": "array", "options": {"path": str(path), "labels_key": "y"}},
                        steps=300), progress=False)
    res = evaluate(run, k=5, n_samples=1000, n_test=300)
    mc = res["mode_collapse"]
    assert mc["kind"] == "class" and len(mc["modes"]) == 2
    assert mc["unassigned_sample_share"] == 0.0
    assert all(m["sample_share"] > 0.2 for m in mc["modes"]), mc["modes"]
    assert len(mc["collapsed"]) < 2
    # the same with ring8's labels and the mixture withheld: eight classes, samples assigned
    bundle = load_test_bundle(ring_run)
    info = ring_run.info
    ring_run.info = type(info)(info.dataset, info.shape, info.kind, info.scaling, None, None)
    try:
        res = evaluate(ring_run, bundle, k=5, n_samples=500, n_test=400)
    finally:
        ring_run.info = info
    mc = res["mode_collapse"]
    assert mc["kind"] == "class" and mc["unassigned_sample_share"] == 0.0 and len(mc["collapsed"]) < 8


def test_mode_collapse_detector_names_the_removed_modes(workdir):
    # the VAE case (kl, density critic, saddle objective) pinned, independent of the defaults
    run = fgm.train(cfg(workdir / "runs", "five", {"dataset": "ring8", "options": {"modes": [0, 1, 2, 3, 4],
                                                                                     "n_train": 20000, "n_test": 500}},
                        steps=1000, model={"options": {"hidden": 64, "depth": 2}, "sigma": 0.1, "learn_sigma": True},
                        optim={"batch_size": 256, "lr": 1e-3}, divergence={"name": "kl"},
                        critic={"form": "density", "generator_loss": "saddle"}),
                    progress=False)
    full = load_test_bundle(run, drop_options=("modes",))
    assert sorted(set(full.test_labels.tolist())) == list(range(8))
    res = evaluate(run, full, k=20, n_samples=2500, n_test=2000)
    mc = res["mode_collapse"]
    assert mc["collapsed"] == [5, 6, 7], json.dumps(mc["modes"], indent=1)
    # the gap alone (sample rule off) names the same modes; the gap shuffled names none
    x, labels = full.test[:2000], full.test_labels[:2000]
    gap = run.log_density(x).double() - run.log_likelihood(x, k=20).double()
    names = [f"mode-{i}" for i in range(8)]
    none = torch.full((10,), -1)
    alone = mode_collapse(gap, labels, none, names, use_samples=False)
    assert alone["collapsed"] == [5, 6, 7], json.dumps(alone["modes"], indent=1)
    shuffled = gap[torch.randperm(gap.numel(), generator=torch.Generator().manual_seed(0))]
    assert mode_collapse(shuffled, labels, none, names, use_samples=False)["collapsed"] == []
    # against its own (five-mode) test data nothing is collapsed
    own = evaluate(run, k=20, n_samples=2500, n_test=1000)
    assert own["mode_collapse"]["collapsed"] == []


def test_a_reference_subtracts_its_gap_point_by_point(ring_run, workdir):
    """``reference``: the detector reads g(x) - g_ref(x) over one density estimate, i.e.
    log p_ref(x) - log p_theta(x), on the same held-out points. The model as its own reference
    leaves exactly 0 everywhere (every mode covered); the JSON names the reference; a reference
    of another data shape is refused in one line; the CLI takes it."""
    res = evaluate(ring_run, k=5, n_samples=300, n_test=200, reference=ring_run)
    mc = res["mode_collapse"]
    assert mc["reference"] == str(ring_run.path)
    assert all(r["median_gap"] == 0.0 and r["gap_says"] == "covered" for r in mc["modes"])
    plain = evaluate(ring_run, k=5, n_samples=300, n_test=200)["mode_collapse"]
    assert any(r["median_gap"] != 0.0 for r in plain["modes"]) and "reference" not in plain
    other = fgm.train(cfg(workdir / "runs", "grid-ref", {"dataset": "grid25", "options": {"n_train": 500, "n_test": 100}},
                          steps=5, model={"latent_dim": 3}), progress=False)
    assert other.info.shape == (2,)  # same shape: accepted, the gap differs from 0
    assert any(r["median_gap"] != 0.0 for r in evaluate(ring_run, k=5, n_samples=300, n_test=200,
                                                        reference=other)["mode_collapse"]["modes"])
    shapes = fgm.train(cfg(workdir / "runs", "shapes-ref", {"dataset": "shapes", "options": {"n_train": 64,
                                                                                             "n_test": 16}},
                           steps=2), progress=False)
    with pytest.raises(FGMError, match="reference model takes data of shape"):
        evaluate(ring_run, k=5, n_samples=300, n_test=200, reference=shapes)
    p = _fgm("evaluate", str(ring_run.path), "-k", "5", "--samples", "300", "--test", "200", "--reference",
             str(ring_run.path))
    assert p.returncode == 0, p.stderr
    assert "gap read against the reference" in p.stdout and "collapsed: none" in p.stdout


def test_against_a_reference_the_gap_is_the_likelihood_deficit(ring_run, workdir):
    """Both gaps are read over one density estimate, which cancels: the model's own estimator
    plays no part (a model trained without one gets the same reading as with one), swapping
    model and reference negates every point's gap, and each mode's mean gap is the mean of
    log p_ref - log p_theta over its points, as ``fgm score`` reports them."""
    plain_vae = fgm.train(cfg(workdir / "runs", "ring-vae", {"dataset": "ring8", "options": {"n_train": 4000,
                                                                                         "n_test": 400}},
                              steps=60, critic={"n_critic": 0}), progress=False)
    kw = dict(k=5, n_samples=300, n_test=200, classifier=False)
    assert "mean_gap" not in evaluate(plain_vae, **kw)["mode_collapse"]["modes"][0]  # no estimator, no gap
    a = evaluate(plain_vae, reference=ring_run, **kw)["mode_collapse"]["modes"]
    b = evaluate(ring_run, reference=plain_vae, **kw)["mode_collapse"]["modes"]
    assert [r["mode"] for r in a] == [r["mode"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["mean_gap"] == pytest.approx(-rb["mean_gap"], abs=1e-9)
    assert any(abs(r["mean_gap"]) > 1e-3 for r in a)
    # the same numbers from the two models' likelihoods, point by point
    bundle = load_test_bundle(ring_run)
    idx = torch.randperm(bundle.test.shape[0], generator=torch.Generator().manual_seed(0))[:200]
    x, labels = bundle.test[idx].float(), bundle.test_labels[idx]
    deficit = torch.as_tensor(ring_run.log_likelihood(x.numpy(), k=5, seed=0)).double() - torch.as_tensor(
        plain_vae.log_likelihood(x.numpy(), k=5, seed=0)).double()
    for r in a:
        assert r["mean_gap"] == pytest.approx(float(deficit[labels == r["mode"]].mean()), rel=1e-3, abs=1e-2)


# --------------------------------------------------------------------------- the commands
def _fgm(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FGM_NO_PROGRESS": "1"}
    return subprocess.run([FGM, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_evaluate_json_run_and_export(ring_run, workdir):
    p = _fgm("evaluate", str(ring_run.path), "--json", "-k", "5", "--samples", "300", "--test", "200")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["modes_total"] == 8 and math.isfinite(res["test_log_likelihood"])
    pytest.importorskip("onnxruntime")
    out = workdir / "export"
    fgm.export(ring_run, out)
    p = _fgm("evaluate", str(out), "--json", "-k", "5", "--samples", "300", "--test", "200")
    assert p.returncode == 0, p.stderr
    ex = json.loads(p.stdout)
    assert ex["modes_total"] == 8
    assert ex["test_log_likelihood"] == pytest.approx(res["test_log_likelihood"], abs=0.5)
    p = _fgm("evaluate", str(workdir / "nope"))
    assert p.returncode == 1 and p.stderr.startswith("fgm: error:") and "Traceback" not in p.stderr


def test_cli_plot_writes_pngs(ring_run, workdir):
    p = _fgm("plot", str(ring_run.path), "-o", str(workdir / "plots"))
    assert p.returncode == 0, p.stderr
    for name in ("samples.png", "density.png", "curves.png"):
        assert (workdir / "plots" / name).stat().st_size > 1000


def test_cli_compare_tiny(workdir):
    out = workdir / "report"
    p = _fgm("compare", "--divergences", "kl,js", "--seeds", "2", "--steps", "30", "--threads", "1",
             "--set", "data.options.n_train=2000", "--set", "data.options.n_test=300",
             "--set", "model.options.hidden=32", "--set", "model.options.depth=1",
             "--samples", "300", "-k", "5", "-o", str(out), timeout=240)
    assert p.returncode == 0, p.stderr
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| kl ") or line.startswith("| js ")]
    assert len(rows) == 2 and all("±" in r for r in rows)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and 'src="samples.png"' not in html
    for name in ("samples.png", "density.png", "curves.png"):
        assert (out / name).exists()
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_evaluate_fashion_mnist(workdir):
    run = fgm.train(cfg(workdir / "runs", "fashion", {"dataset": "idx", "options": {"limit": 1000, "test_limit": 300}},
                        steps=10, model={"options": {"hidden": 32, "depth": 1}}), progress=False)
    res = evaluate(run, k=2, n_samples=200, n_test=300)
    _finite(res, ["test_bits_per_dim", "sharpness", "classifier_accuracy", "class_kl", "frechet_distance"])
    assert len(res["mode_collapse"]["modes"]) == 10
