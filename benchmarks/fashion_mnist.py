"""Fashion-MNIST: how the f-divergence changes sharpness and mode coverage, in one command.

    python benchmarks/fashion_mnist.py                  # the full experiment (about 3 h on 2 CPU cores)
    python benchmarks/fashion_mnist.py --quick          # smoke run: tiny nets, a few steps, one seed
    python benchmarks/fashion_mnist.py --data DIR       # IDX files elsewhere (default: Debian's
                                                        # dataset-fashion-mnist package)
    python benchmarks/fashion_mnist.py --report-only    # rewrite the reports from OUT/results.json
                                                        # and OUT/steps-*/results.json
    python benchmarks/fashion_mnist.py --reevaluate     # evaluate the trained runs again (this
                                                        # version's metrics), then rewrite the reports
    python benchmarks/fashion_mnist.py --device cuda --seeds 1 --steps 2000 --trend-steps '' \
        --out docs/results/fashion_mnist/steps-2000     # the report's 2,000-step budget (one GPU)

The full experiment trains every row at the main budget (``--steps``, 1,000) and again at each
smaller budget of ``--trend-steps`` (500), into OUT/steps-N, so the report shows the trend with
budget beside the quality goals.

The same DCGAN networks and budget for every row (``BASE``): the density critic (f-GM) with
``DENSITY`` (kl is the VAE), plus the marginal critic (f-GAN) and the joint critic with js as
references, ``--seeds`` seeds each (``fgm compare``, mean ± s.e.). Then one kl model trained
without the classes ``REMOVED`` and evaluated on all ten, where the collapse detector should
name exactly those. Writes ``--out`` (default ``docs/results/fashion_mnist``): report.md,
report.html, samples/curves figures, results.json, the per-part compare reports under parts/ and
every run under runs/ (or ``--runs DIR``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: density-critic rows: mode covering (kl, alpha 2) to mode seeking (reverse_kl, alpha -0.5).
DENSITY = ["kl", "reverse_kl", "js", "hellinger", "alpha:-0.5", "alpha:0.25", "alpha:2"]
#: reference rows: (critic, divergences).
REFERENCES = [("marginal", ["js"]), ("joint", ["js"])]
#: classes left out of the collapse run's training data (Trouser, Sandal, Bag).
REMOVED = [1, 5, 8]
#: the budget of every row (one set of networks, one length, one batch): fgm's image defaults
#: (fgm_core.config.IMAGE_DEFAULTS) but for the length, chosen so that the whole experiment
#: (two budgets, 3 seeds) fits in about three hours on 2 CPU cores.
BASE: dict[str, Any] = {
    "data": {"dataset": "idx", "options": {}},
    "model": {"architecture": "dcgan", "options": {"channels": 32}, "latent_dim": 16, "sigma": 0.1},
    "optim": {"batch_size": 64, "lr": 1e-3},
    "run": {"steps": 1000, "checkpoint_every": 1000, "device": "cpu", "threads": None, "eval_samples": 500},
}
QUICK: dict[str, Any] = {
    "data": {"options": {"limit": 300, "test_limit": 100}},
    "model": {"options": {"channels": 4, "z_hidden": 16}, "latent_dim": 4},
    "optim": {"batch_size": 16},
    "run": {"steps": 3, "eval_samples": 16},
}


def base_config(
    data: Path | None, quick: bool, steps: int | None, threads: int | None, device: str = "cpu"
) -> dict[str, Any]:
    from fgm_core.config import deep_merge

    cfg = deep_merge(BASE, QUICK) if quick else json.loads(json.dumps(BASE))
    cfg["run"]["device"] = device
    if data is not None:
        cfg["data"]["options"]["path"] = str(data)
    if steps is not None:
        cfg["run"]["steps"] = steps
    cfg["run"]["threads"] = threads
    if threads is None:
        del cfg["run"]["threads"]
    return cfg


def collapse_run(
    base: dict[str, Any],
    runs: Path,
    k: int,
    n_samples: int,
    references: list[str] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """kl trained without ``REMOVED``, then :func:`collapse_evaluation`."""
    import fgm_core as fgm
    from fgm_core.config import deep_merge
    from fgm_core.storage import remove_run_dir

    keep = [c for c in range(10) if c not in REMOVED]
    cfg = deep_merge(
        base,
        {
            "data": {"options": {"classes": keep}},
            "divergence": {"name": "kl"},
            "run": {
                "out_dir": str(runs),
                "name": "collapse-kl-density-s0",
                "seed": 0,
                "progress": False,
                "tensorboard": False,
            },
        },
    )
    if (runs / cfg["run"]["name"]).exists():  # this benchmark's earlier collapse run: replace it
        remove_run_dir(runs / cfg["run"]["name"])
    t0 = time.perf_counter()
    run = fgm.train(cfg)
    return collapse_evaluation(run, time.perf_counter() - t0, k, n_samples, references, out)


def collapse_evaluation(
    run: Any,
    train_seconds: float,
    k: int,
    n_samples: int,
    references: list[str] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """The collapse run evaluated on all ten classes. With ``references`` (the main table's kl
    runs, one per seed: the same model trained on all ten classes) the detector reads the gap
    against the first; ``by_reference`` gives the reading against each, and
    ``mode_collapse_plain`` the reading without any. With ``out``, also draws
    OUT/collapse_samples.png (:func:`removed_class_figure`)."""
    from fgm_core.run import Run
    from fgm_report.evaluate import evaluate, load_test_bundle

    run = Run.load(run) if isinstance(run, (str, Path)) else run
    bundle = load_test_bundle(run, drop_options=("classes",))  # all ten classes, the classifier too
    res = evaluate(run, bundle, k=k, n_samples=n_samples, seed=0)
    if references:
        res["mode_collapse_plain"] = res["mode_collapse"]
        res["by_reference"] = [
            evaluate(run, bundle, k=k, n_samples=n_samples, seed=0, reference=ref)["mode_collapse"]
            for ref in references
        ]
        res["mode_collapse"] = res["by_reference"][0]
    res["run"] = str(run.path)
    res["train_seconds"] = train_seconds
    res["removed"] = [bundle.label_names[c] if bundle.label_names else str(c) for c in REMOVED]
    if out is not None and "classifier_accuracy" in res:
        res["figure"] = removed_class_figure(run, bundle, n_samples, out / "collapse_samples.png", res["removed"]).name
    return res


def removed_class_figure(run: Any, bundle: Any, n_samples: int, path: Path, names: list[str]) -> Path:
    """Per removed class: held-out images of it beside the evaluation's samples (seed 1, as
    :func:`fgm_report.evaluate.evaluate` draws them) that the classifier puts in it."""
    import numpy as np

    from fgm_report.classifier import get_classifier
    from fgm_report.evaluate import model_config
    from fgm_report.plots import _plt, _save, image_grid

    clf = get_classifier(bundle, model_config(run))
    samples = run.sample(n_samples, seed=1)
    pred = clf.predict(samples)
    top = run.info.scaling.shift + run.info.scaling.scale
    plt = _plt()
    fig, axes = plt.subplots(len(REMOVED), 2, figsize=(12, 0.8 * len(REMOVED) + 0.5), dpi=110, squeeze=False)
    for row, (c, name) in enumerate(zip(REMOVED, names)):
        data = bundle.test[bundle.test_labels == c][:12].float().numpy()
        mine = samples[pred == c][:12].numpy()
        for ax, imgs, label in (
            (axes[row][0], data, f"{name}: held-out images"),
            (axes[row][1], mine, f"samples the classifier calls {name} ({int((pred == c).sum())} of {n_samples})"),
        ):
            if len(imgs):
                grid = image_grid(imgs, scaling_max=top, cols=12)
                ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(np.zeros((30, 12 * 30)), cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    fig.suptitle("The collapse run: the removed classes and the samples put in them", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _named(mc: dict[str, Any]) -> list[str]:
    """The classes the gap says are missing."""
    return [r["name"] for r in mc["modes"] if r.get("gap_says") == "missing"]


def _by_gap(mc: dict[str, Any]) -> list[dict[str, Any]]:
    """The classes with a median gap, largest first."""
    return sorted((r for r in mc["modes"] if "median_gap" in r), key=lambda r: -r["median_gap"])


def _reading(mc: dict[str, Any]) -> str:
    rule = mc["rule"]
    if not rule.get("relative"):
        return f"as it is (threshold {rule['gap_threshold_nats']:.2f} nats)"
    if "outlier_alpha" not in rule:  # read by an earlier version of the rule
        return (
            f"relative to the median class with the rule of the time (offset {rule['gap_offset_nats']:.0f} nats, "
            f"threshold {rule['gap_threshold_nats']:.0f} nats)"
        )
    nxt = rule["gap_threshold_nats"]
    return (
        f"relative to the other classes (generalized ESD test at level {rule['outlier_alpha']}; the rest's mean "
        f"{rule['gap_offset_nats']:.0f} nats"
        + (f", the next outlier would need {nxt:.0f} more)" if nxt is not None else ")")
    )


def collapse_section(res: dict[str, Any]) -> list[str]:
    mc = res["mode_collapse"]
    named = mc["collapsed_names"]
    by_gap = _named(mc)
    removed = res["removed"]

    def verdict(names: list[str]) -> str:
        if sorted(names) == sorted(removed):
            return "exactly the removed ones"
        hit, other = len(set(names) & set(removed)), len(set(names) - set(removed))
        return f"{hit} of the {len(removed)} removed, {other} others"

    ranked = _by_gap(mc)
    top = [r["name"] for r in ranked[: len(removed)]]
    with_ref = "reference" in mc
    gap_name = "log p_ref(x) - log p_theta(x)" if with_ref else "g(x) = log p_D(x) - log p_theta(x)"
    against = (
        "The gap against a reference (the main table's kl run, seed 0: the same networks and budget trained on "
        "all ten classes) reads the model's gap and the reference's over one density estimate, which cancels: "
        "what is left is the model's likelihood deficit against the reference on the same held-out image, "
        f"{gap_name}. "
        if with_ref
        else ""
    )
    plain = res.get("mode_collapse_plain")
    lines = [
        "## Mode collapse: three classes removed",
        "",
        f"One kl model (density critic, seed 0, the same budget) trained without **{', '.join(removed)}**, "
        f"evaluated on all ten classes ({res['train_seconds']:.0f} s of training). {against}"
        f"Read {_reading(mc)}, the gap says missing: **{', '.join(by_gap) or 'none'}** ({verdict(by_gap)}). "
        f"With the samples' reading (the classifier's share of the samples in the class) the detector's verdict "
        f"is collapsed for **{', '.join(named) or 'none'}** ({verdict(named)}); where the samples contradict the "
        "gap the verdict is uncertain. The rule is the README's (section \"Mode collapse: what the divergence "
        'does").',
        "",
    ]
    if top:
        lines += [
            f"Classes by median gap, largest first: "
            + ", ".join(f"{r['name']} ({r['median_gap']:.0f})" for r in ranked)
            + f"; the {len(removed)} largest are {verdict(top)}.",
            "",
        ]
    lines += [
        f"| class | data % | sample % | median gap (nats) | share above threshold (%) | the gap says | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in mc["modes"]:
        gap = f"{r['median_gap']:.0f}" if "median_gap" in r else (f"{r['mean_gap']:.0f}" if "mean_gap" in r else "–")
        share = f"{100 * r['gap_share']:.0f}" if "gap_share" in r else "–"
        mark = f"**{r['verdict']}**" if r["collapsed"] else r["verdict"]
        name = f"{r['name']} (removed)" if r["name"] in removed else r["name"]
        lines.append(
            f"| {name} | {100 * r['data_share']:.1f} | {100 * r['sample_share']:.1f} | {gap} | {share} | "
            f"{r.get('gap_says', '–')} | {mark} |"
        )
    by_ref = res.get("by_reference") or []
    readings = [("none (the model's own gap)", plain)] if plain else []
    readings += [(f"{Path(m.get('reference', '?')).name}", m) for m in by_ref]
    if readings:
        lines += [
            "",
            "The same model read without a reference and against each reference seed (the table above uses the "
            "first reference):",
            "",
            "| reference | the gap says missing | verdict collapsed | classes by median gap (nats) |",
            "|---|---|---|---|",
        ]
        for label, m in readings:
            ranking = ", ".join(
                f"{'**' + r['name'] + '**' if r['name'] in removed else r['name']} ({r['median_gap']:.0f})"
                for r in _by_gap(m)
            )
            lines.append(
                f"| {label} | {', '.join(_named(m)) or 'none'} ({verdict(_named(m))}) | "
                f"{', '.join(m['collapsed_names']) or 'none'} | {ranking} |"
            )
    contradicted = [r for r in mc["modes"] if r.get("gap_says") == "missing" and r["verdict"] == "uncertain"]
    if contradicted:
        lines += [
            "",
            "Where the gap says missing but the verdict is uncertain, the samples contradict the gap: the classifier "
            "(trained on real images) puts "
            + ", ".join(f"{100 * r['sample_share']:.1f}% of the samples in {r['name']}" for r in contradicted)
            + " (the data: "
            + ", ".join(f"{100 * r['data_share']:.1f}%" for r in contradicted)
            + "). "
            + ("The figure shows what those samples look like. " if res.get("figure") else "")
            + "A classifier reads blurry or broken samples as some class; the gap does not depend on that reading.",
        ]
        if res.get("figure"):
            lines += ["", f"![samples the classifier puts in the removed classes]({res['figure']})"]
    if res.get("note"):
        lines += ["", f"**Note.** {res['note']}"]
    return lines + [""]


def verdict_table(summary: dict[str, Any]) -> list[str]:
    """Per row and class: on how many seeds the detector calls the class collapsed."""
    from fgm_report.compare import _label

    rows: dict[str, dict[str, int]] = {}
    seeds: dict[str, int] = {}
    names: list[str] = []
    for r in summary["runs"]:
        mc = r.get("mode_collapse")
        if "error" in r or not mc:
            continue
        lab = _label(r["divergence"], r["critic"], summary["critics"])
        seeds[lab] = seeds.get(lab, 0) + 1
        for m in mc["modes"]:
            if m["name"] not in names:
                names.append(m["name"])
            rows.setdefault(lab, {}).setdefault(m["name"], 0)
            rows[lab][m["name"]] += int(m["collapsed"])
    if not rows:
        return []
    lines = [
        "## Mode-collapse verdict per class",
        "",
        "Seeds on which the detector calls the class collapsed (0 everywhere: all ten classes covered).",
        "",
        "| row | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for lab, per in rows.items():
        lines.append(f"| {lab} | " + " | ".join(f"{per.get(n, 0)}/{seeds[lab]}" for n in names) + " |")
    return lines + [""]


def row_stats(summary: dict[str, Any], key: str) -> dict[str, tuple[float, float, int]]:
    """Per row label: (mean, s.e., seeds) of ``key`` over the runs that finished."""
    from fgm_report.compare import _label, mean_se

    vals: dict[str, list[float]] = {}
    for r in summary["runs"]:
        if "error" in r or r.get(key) is None:
            continue
        vals.setdefault(_label(r["divergence"], r["critic"], summary["critics"]), []).append(float(r[key]))
    return {lab: (*mean_se(v), len(v)) for lab, v in vals.items()}


def goals_section(summary: dict[str, Any]) -> list[str]:
    """The issue's quality goals, checked against the table: the best density-critic row against
    the VAE (kl / density) and the f-GAN reference (js / marginal)."""
    fd = row_stats(summary, "frechet_distance")
    ckl = row_stats(summary, "class_kl")
    sharp = row_stats(summary, "sharpness_means")
    vae, fgan = "kl / density", "js / marginal"
    density = [lab for lab in fd if lab.endswith("/ density") and lab != vae]
    if vae not in fd or not density:
        return []
    best = min(density, key=lambda lab: fd[lab][0])
    covered = [lab for lab in density if ckl.get(lab, (math.inf,))[0] <= 0.05]
    best_cov = min(covered, key=lambda lab: fd[lab][0]) if covered else None

    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    lines = [
        "## Quality goals",
        "",
        f"Best density-critic row by Frechet distance: **{best}**, {fd[best][0]:.1f} ± {fd[best][1]:.1f} "
        f"against the VAE's {fd[vae][0]:.1f} ± {fd[vae][1]:.1f} (ratio {fd[best][0] / fd[vae][0]:.2f}).",
        "",
        "| goal | measured | |",
        "|---|---|---|",
    ]
    if best_cov:
        r = fd[best_cov][0] / fd[vae][0]
        lines.append(
            f"| a density row with Frechet <= 0.5 x the VAE's and class KL <= 0.05 | {best_cov}: ratio "
            f"{r:.2f}, class KL {ckl[best_cov][0]:.3f} | {met(r <= 0.5)} |"
        )
    else:
        lines.append(
            f"| a density row with Frechet <= 0.5 x the VAE's and class KL <= 0.05 | no density row (the VAE aside) "
            f"has class KL <= 0.05 (best: {best}, {ckl.get(best, (math.nan,))[0]:.3f}) "
            f"| {met(False)} |"
        )
    if best in sharp and vae in sharp:
        lines.append(
            f"| sharper than the VAE (Laplacian variance of the generator means; data "
            f"{summary['runs'][0].get('data_sharpness', math.nan):.4g}) | {best} {sharp[best][0]:.4g} "
            f"against {sharp[vae][0]:.4g} | {met(sharp[best][0] > sharp[vae][0])} |"
        )
    if fgan in fd:
        r = fd[best][0] / fd[fgan][0]
        lines.append(
            f"| best density row within 20% of f-GAN's Frechet | {fd[best][0]:.1f} against "
            f"{fd[fgan][0]:.1f} (ratio {r:.2f}) | {met(r <= 1.2)} |"
        )
    return lines + [""]


def trend_section(budgets: list[dict[str, Any]], main: dict[str, Any]) -> list[str]:
    """Frechet distance and class KL per row at each budget (steps), smallest budget first. A
    budget run with other seeds or on another device (``--device``) says so in its column."""
    if not budgets:
        return []
    summaries = sorted([*budgets, main], key=lambda x: x["config"]["run"]["steps"])
    fds = [row_stats(x, "frechet_distance") for x in summaries]
    ckls = [row_stats(x, "class_kl") for x in summaries]

    def column(x: dict[str, Any]) -> str:
        run = x["config"]["run"]
        note = []
        if x["seeds"] != main["seeds"]:
            note.append(f"{x['seeds']} seed{'s' if x['seeds'] != 1 else ''}")
        if run.get("device", "cpu") != main["config"]["run"].get("device", "cpu"):
            note.append(str(x.get("machine", run.get("device"))).split(",")[0])
        return f"{run['steps']} steps" + (f" ({', '.join(note)})" if note else "")

    cols = [column(x) for x in summaries]
    links = [f"[steps-{x['config']['run']['steps']}](steps-{x['config']['run']['steps']}/report.md)" for x in budgets]
    lines = [
        "## Trend with budget",
        "",
        "The same rows and networks trained for other numbers of steps (full reports: " + ", ".join(links) + "). "
        "Frechet distance (lower is better) and class-histogram KL, mean over seeds.",
        "",
        "| row | "
        + " | ".join(f"Frechet, {c}" for c in cols)
        + " | "
        + " | ".join(f"class KL, {c}" for c in cols)
        + " |",
        "|---|" + "---|" * (2 * len(cols)),
    ]
    for lab in row_stats(main, "frechet_distance"):
        f = " | ".join(f"{fd[lab][0]:.1f}" if lab in fd else "–" for fd in fds)
        c = " | ".join(f"{ck[lab][0]:.3f}" if lab in ck else "–" for ck in ckls)
        lines.append(f"| {lab} | {f} | {c} |")
    return lines + [""]


def vae_runs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished kl / density runs (the VAE rows): the collapse run's references."""
    return [r for r in summary["runs"] if r["divergence"] == "kl" and r["critic"] == "density" and "error" not in r]


def run_experiment(args: argparse.Namespace, out: Path, steps: int | None, runs: Path, command: str) -> dict[str, Any]:
    """Train and evaluate every row and the collapse run at one budget; returns the summary
    (also written to OUT/results.json, with ``command``, the one that reproduces it)."""
    from fgm_report.compare import compare, merge

    seeds = args.seeds or (1 if args.quick else 3)
    k = args.k or (2 if args.quick else 100)
    n_samples = args.samples or (200 if args.quick else 2500)
    base = base_config(args.data, args.quick, steps, args.threads, args.device)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = []
    for critic, divs in [("density", DENSITY), *REFERENCES]:
        part = out / "parts" / critic
        compare(
            divs,
            [critic],
            seeds,
            part,
            base=base,
            k=k,
            n_samples=n_samples,
            progress=not args.quick,
            threads=args.threads,
            runs_dir=runs,
        )
        parts.append(part)
    summary = merge(out, parts, write=False)
    summary["critics"] = ["density", "marginal", "joint"]
    summary["collapse_run"] = collapse_run(
        base, runs, k, n_samples, references=[r["run"] for r in vae_runs(summary)], out=out
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = ""
    if args.device.startswith("cuda"):
        import torch

        gpu = f"{torch.cuda.get_device_name(torch.device(args.device))}, "
    summary["machine"] = (
        f"{gpu}{os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f} at the end, "
        f"torch threads {args.threads or 'default'}; {time.perf_counter() - t0:.0f} s in all"
    )
    summary["command"] = command
    (out / "results.json").write_text(json.dumps(summary, default=str))
    return summary


def reevaluate_budget(out: Path, threads: int | None) -> bool:
    """Evaluate the runs of OUT/results.json again (same K and sample count), the collapse run
    with its references too, and rewrite results.json. False, and nothing changed, when a run
    is not on this machine."""
    from fgm_report.compare import reevaluate

    summary = json.loads((out / "results.json").read_text())
    col = summary.get("collapse_run") or {}
    refs = [r["run"] for r in vae_runs(summary)]
    collapse_dir = col.get("run") or (str(Path(refs[0]).parent / "collapse-kl-density-s0") if refs else None)
    needed = [r["run"] for r in summary["runs"] if "error" not in r] + ([collapse_dir] if collapse_dir else [])
    missing = [p for p in needed if not (Path(p) / "model.safetensors").is_file()]
    if missing:
        print(f"{out}: {len(missing)} runs are not on this machine (first: {missing[0]}): kept as measured")
        return False
    if threads:
        import torch

        torch.set_num_threads(threads)
    first = next(r for r in summary["runs"] if "error" not in r)
    k, n_samples = int(first["k"]), int(first["n_samples"])
    summary = reevaluate(out, k=k, n_samples=n_samples, progress=True)
    if collapse_dir:
        summary["collapse_run"] = collapse_evaluation(
            collapse_dir, col.get("train_seconds", float("nan")), k, n_samples, refs, out
        )
    summary["reevaluated"] = time.strftime("%Y-%m-%d")
    (out / "results.json").write_text(json.dumps(summary, default=str))
    print(f"{out}: re-evaluated {len(summary['runs'])} runs and the collapse run")
    return True


def write_full_report(
    summary: dict[str, Any], out: Path, budgets: list[dict[str, Any]], quick: bool, command: str
) -> None:
    from fgm_report.compare import write_report

    seeds = summary["seeds"]
    machine = summary.get("machine") or f"{summary['total_seconds']:.0f} s for the rows, without the collapse run"
    extra = [
        *goals_section(summary),
        *trend_section(budgets, summary),
        *verdict_table(summary),
        *collapse_section(summary["collapse_run"]),
        "## Budget and reproduction",
        "",
        f"Every row: the networks and budget above, seeds 0..{seeds - 1}; machine: {machine}."
        + (
            f" Every run was evaluated again from its saved weights on {summary['reevaluated']} (`--reevaluate`)."
            if summary.get("reevaluated")
            else ""
        ),
        "",
        f"Reproduce: `{command}`.",
        "",
    ]
    write_report(
        summary,
        out,
        extra=extra,
        title="Fashion-MNIST: how the divergence changes sharpness and mode coverage"
        + (" (quick smoke run)" if quick else ""),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny nets, 3 steps, 1 seed, 300 images")
    ap.add_argument("--data", type=Path, default=None, help="directory of the four IDX files")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fashion_mnist")
    ap.add_argument("--runs", type=Path, default=None, help="where the trained runs go (default OUT/runs)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000; 3 with --quick)")
    ap.add_argument(
        "--trend-steps",
        default=None,
        help="smaller budgets, comma-separated, each run in full into OUT/steps-N (default 500; "
        "none with --quick; '' for none)",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from OUT/results.json (and OUT/steps-N/results.json) without training",
    )
    ap.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate the trained runs of OUT/results.json (and OUT/steps-N/) again with this version's metrics "
        "and rewrite the reports, without training; a budget whose runs are not on this machine is kept as it is",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--device", default="cpu", help="cpu (the shipped report's), cuda or cuda:N")
    ap.add_argument("-k", type=int, default=None, help="importance samples for the likelihood (100; 2 quick)")
    ap.add_argument("--samples", type=int, default=None, help="samples per evaluation (2500; 200 quick)")
    args = ap.parse_args(argv)

    out = args.out
    runs = args.runs or out / "runs"
    trend = args.trend_steps if args.trend_steps is not None else ("" if args.quick else "500")
    trend_steps = [int(t) for t in trend.split(",") if t.strip()]
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--reevaluate")]
    command = " ".join(["python benchmarks/fashion_mnist.py", *(shlex.quote(a) for a in given)])
    if args.report_only or args.reevaluate:
        if args.reevaluate:
            for p in [out / "results.json", *sorted(out.glob("steps-*/results.json"))]:
                reevaluate_budget(p.parent, args.threads)
        summary = json.loads((out / "results.json").read_text())
        budgets = []
        for p in sorted(out.glob("steps-*/results.json")):
            b = json.loads(p.read_text())
            n = b["config"]["run"]["steps"]
            write_full_report(b, p.parent, [], args.quick, b.get("command", f"{command} (its {n}-step budget)"))
            budgets.append(b)
    else:
        budgets = []
        for n in trend_steps:
            sub = out / f"steps-{n}"
            b = run_experiment(args, sub, n, runs / f"steps-{n}", f"{command} (its {n}-step budget)")
            write_full_report(b, sub, [], args.quick, b["command"])
            budgets.append(b)
        summary = run_experiment(args, out, args.steps, runs, command)
    write_full_report(summary, out, budgets, args.quick, summary.get("command", command))
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
