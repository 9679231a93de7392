"""Fashion-MNIST: how the f-divergence changes sharpness and mode coverage, in one command.

    python benchmarks/fashion_mnist.py                  # the full experiment (hours on 2 CPU cores)
    python benchmarks/fashion_mnist.py --quick          # smoke run: tiny nets, a few steps, one seed
    python benchmarks/fashion_mnist.py --data DIR       # IDX files elsewhere (default: Debian's
                                                        # dataset-fashion-mnist package)

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
import os
import platform
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
#: (fgm_core.config.IMAGE_DEFAULTS) but for the length.
BASE: dict[str, Any] = {
    "data": {"dataset": "idx", "options": {}},
    "model": {"architecture": "dcgan", "options": {"channels": 32}, "latent_dim": 16, "sigma": 0.1},
    "optim": {"batch_size": 64, "lr": 1e-3},
    "run": {"steps": 3000, "checkpoint_every": 1000, "device": "cpu", "threads": None, "eval_samples": 500},
}
QUICK: dict[str, Any] = {
    "data": {"options": {"limit": 300, "test_limit": 100}},
    "model": {"options": {"channels": 4, "z_hidden": 16}, "latent_dim": 4},
    "optim": {"batch_size": 16},
    "run": {"steps": 3, "eval_samples": 16},
}


def base_config(data: Path | None, quick: bool, steps: int | None, threads: int | None) -> dict[str, Any]:
    from fgm_core.config import deep_merge

    cfg = deep_merge(BASE, QUICK) if quick else json.loads(json.dumps(BASE))
    if data is not None:
        cfg["data"]["options"]["path"] = str(data)
    if steps is not None:
        cfg["run"]["steps"] = steps
    cfg["run"]["threads"] = threads
    if threads is None:
        del cfg["run"]["threads"]
    return cfg


def collapse_run(base: dict[str, Any], runs: Path, k: int, n_samples: int) -> dict[str, Any]:
    """kl trained without ``REMOVED``, evaluated on all ten classes."""
    import fgm_core as fgm
    from fgm_core.config import deep_merge
    from fgm_report.evaluate import evaluate, load_test_bundle

    keep = [c for c in range(10) if c not in REMOVED]
    cfg = deep_merge(base, {"data": {"options": {"classes": keep}}, "divergence": {"name": "kl"},
                            "run": {"out_dir": str(runs), "name": "collapse-kl-density-s0", "seed": 0,
                                    "progress": False, "tensorboard": False}})
    t0 = time.perf_counter()
    run = fgm.train(cfg)
    seconds = time.perf_counter() - t0
    bundle = load_test_bundle(run, drop_options=("classes",))  # all ten classes, the classifier too
    res = evaluate(run, bundle, k=k, n_samples=n_samples, seed=0)
    res["train_seconds"] = seconds
    res["removed"] = [bundle.label_names[c] if bundle.label_names else str(c) for c in REMOVED]
    return res


def collapse_section(res: dict[str, Any]) -> list[str]:
    mc = res["mode_collapse"]
    named = mc["collapsed_names"]
    removed = res["removed"]
    verdict = "exactly those" if sorted(named) == sorted(removed) else (
        f"{len(set(named) & set(removed))} of the {len(removed)} removed, "
        f"{len(set(named) - set(removed))} others")
    lines = ["## Mode collapse: three classes removed", "",
             f"One kl model (density critic, seed 0, the same budget) trained without **{', '.join(removed)}**, "
             f"evaluated on all ten classes ({res['train_seconds']:.0f} s of training). The detector names: "
             f"**{', '.join(named) or 'none'}** ({verdict}). Rule: a class is collapsed when its share of the "
             "samples is below 0.2 of its share of the data and either half its held-out points have a gap "
             "g(x) = log p_D(x) - log p_theta(x) above log 10 nats, or its sample share is below 0.05 of "
             "the data's.", "",
             "| class | data % | sample % | mean gap (nats) | gap > log 10 (%) | verdict |", "|---|---|---|---|---|---|"]
    for r in mc["modes"]:
        gap = f"{r['mean_gap']:.1f}" if "mean_gap" in r else "–"
        share = f"{100 * r['gap_share']:.0f}" if "gap_share" in r else "–"
        mark = "**collapsed**" if r["collapsed"] else "covered"
        if r["name"] in removed:
            mark += " (removed)"
        lines.append(f"| {r['name']} | {100 * r['data_share']:.1f} | {100 * r['sample_share']:.1f} | {gap} | "
                     f"{share} | {mark} |")
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
    lines = ["## Mode-collapse verdict per class", "",
             "Seeds on which the detector calls the class collapsed (0 everywhere: all ten classes covered).", "",
             "| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lab, per in rows.items():
        lines.append(f"| {lab} | " + " | ".join(f"{per.get(n, 0)}/{seeds[lab]}" for n in names) + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny nets, 3 steps, 1 seed, 300 images")
    ap.add_argument("--data", type=Path, default=None, help="directory of the four IDX files")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "fashion_mnist")
    ap.add_argument("--runs", type=Path, default=None, help="where the trained runs go (default OUT/runs)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3; 1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 3000; 3 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("-k", type=int, default=None, help="importance samples for the likelihood (100; 2 quick)")
    ap.add_argument("--samples", type=int, default=None, help="samples per evaluation (2500; 200 quick)")
    args = ap.parse_args(argv)

    from fgm_report.compare import compare, merge, write_report

    seeds = args.seeds or (1 if args.quick else 3)
    k = args.k or (2 if args.quick else 100)
    n_samples = args.samples or (200 if args.quick else 2500)
    base = base_config(args.data, args.quick, args.steps, args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = args.runs or out / "runs"
    t0 = time.perf_counter()
    parts = []
    for critic, divs in [("density", DENSITY), *REFERENCES]:
        part = out / "parts" / critic
        compare(divs, [critic], seeds, part, base=base, k=k, n_samples=n_samples, progress=not args.quick,
                threads=args.threads, runs_dir=runs)
        parts.append(part)
    summary = merge(out, parts, write=False)
    summary["critics"] = ["density", "marginal", "joint"]
    collapse = collapse_run(base, runs, k, n_samples)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f} at the end, "
               f"torch threads {args.threads or 'default'}; {time.perf_counter() - t0:.0f} s in all")
    extra = [*verdict_table(summary), *collapse_section(collapse),
             "## Budget and reproduction", "",
             f"Every row: the networks and budget above, seeds 0..{seeds - 1}; machine: {machine}.", "",
             f"Reproduce: `python benchmarks/fashion_mnist.py{' --quick' if args.quick else ''}` "
             f"({'smoke run' if args.quick else 'the full experiment'}).", ""]
    summary["collapse_run"] = collapse
    (out / "results.json").write_text(json.dumps(summary, default=str))
    write_report(summary, out, extra=extra,
                 title="Fashion-MNIST: how the divergence changes sharpness and mode coverage"
                 + (" (quick smoke run)" if args.quick else ""))
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
