"""Density-estimator fidelity: how well f-GM's l(x) and the model likelihood match the truth.

On held-out points of three 2-D sets with exact densities (``ring8``, ``grid25`` and one
Gaussian, ``gauss``: ring8 reduced to mode 0 with std 0.5, i.e. N((1, 0), 0.25 I)) it reports

- ``mae``: mean |l(x) - log p_D(x)| of the density estimator (nats),
- ``spearman``: rank correlation of l(x) with log p_D(x),
- ``gap``: -H(p_D) minus the model's held-out log-likelihood (importance-sampled, K = 100),
- modes captured and the high-quality share (PacGAN protocol, 2,500 samples) on the mixtures,

for the default run (``fgm train`` with no config, the grid25 configuration for grid25) and,
with ``--divergences``, for every built-in divergence with the density critic at a short
budget (``--short-steps``). Goals for the default run: mae <= 0.5, spearman >= 0.9, gap <= 0.5.

    python benchmarks/estimator_fidelity.py                       # default runs, 3 sets
    python benchmarks/estimator_fidelity.py --divergences --short-steps 1000
    python benchmarks/estimator_fidelity.py --quick               # smoke run (300 steps)

Runs go to a temporary directory; ``--json`` writes the figures (merged into the file when it
exists, so the sets can run in separate processes: ``--sets ring8,gauss`` and ``--sets grid25``). Timings are wall seconds on
whatever else the machine runs; steps/s is given too, to re-measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fgm_core.api import train
from fgm_core.config import load_toml
from fgm_report.compare import mean_se
from fgm_report.evaluate import mixture_negative_entropy
from fgm_report.metrics import data_mixture, estimator_fidelity, mixture_log_density, mixture_metrics

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOALS = {"mae": 0.5, "spearman": 0.9, "gap": 0.5}
#: the three sets: run-config overrides (the default run adds them to the no-argument default)
SETS: dict[str, dict[str, Any]] = {
    "ring8": {"data": {"dataset": "ring8"}},
    "grid25": {"data": {"dataset": "grid25"}},
    "gauss": {"data": {"dataset": "ring8", "options": {"modes": [0], "std": 0.5}}},
}
BUILTIN = ("kl", "reverse_kl", "pearson", "neyman", "hellinger", "js", "gan", "jeffrey", "alpha")


def measure(run, n_test: int = 2000, k: int = 100) -> dict[str, Any]:
    """Fidelity figures of a trained run on its held-out split."""
    from fgm_core.build import load_data
    from fgm_core.plugins import get_plugins

    bundle = load_data(run.config, get_plugins())
    test = bundle.test[:n_test].double()
    means, stds, w = data_mixture(bundle.mixture, bundle.info["kept_modes"])
    truth = mixture_log_density(test, means, stds, w)
    out: dict[str, Any] = {}
    if run.model.density_estimator:
        est = run.log_density(test.float()).double()
        fid = estimator_fidelity(est, truth)
        out.update(mae=fid["estimator_mae"], spearman=fid["estimator_spearman"], mean_l=float(est.mean()))
    ll = run.log_likelihood(test.float(), k=k).double()
    neg_h = mixture_negative_entropy(means.float(), stds.float(), w.float())
    out.update(mean_truth=float(truth.mean()), neg_entropy=neg_h, log_likelihood=float(ll.mean()),
               gap=neg_h - float(ll.mean()))
    if len(bundle.mixture["means"]) > 1 and len(means) > 1:
        samples = run.sample(2500, seed=run.config.run.seed + 1)
        mm = mixture_metrics(samples, means.float(), stds.float())
        out.update(modes=mm["modes_captured"], modes_total=mm["modes_total"], high_quality=mm["high_quality"])
    return out


def one(config: dict[str, Any], out_dir: Path, name: str, threads: int) -> dict[str, Any]:
    cfg = json.loads(json.dumps(config))
    cfg.setdefault("run", {}).update(out_dir=str(out_dir), name=name, threads=threads, progress=False,
                                      tensorboard=False)
    t0 = time.perf_counter()
    run = train(cfg, progress=False)
    secs = time.perf_counter() - t0
    res = measure(run)
    res.update(steps=run.config.run.steps, train_seconds=round(secs, 1),
               steps_per_second=round(run.config.run.steps / secs, 1))
    return res


#: issue goals for the default runs on the mixtures: every seed covers every mode at this high-quality share.
MIXTURE_TARGETS = {"ring8": {"hq": 0.95, "seconds": 180}, "grid25": {"hq": 0.95, "seconds": 600}}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number (``*_se``: its standard error), and the seeds' rows."""
    out: dict[str, Any] = {"per_seed": per_seed, "seeds": len(per_seed)}
    for key, v in per_seed[0].items():
        vals = [r[key] for r in per_seed if isinstance(r.get(key), (int, float))]
        if isinstance(v, (int, float)) and len(vals) == len(per_seed):
            out[key], out[f"{key}_se"] = mean_se(vals)
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from fgm_core.config import deep_merge

    return deep_merge(a, b)


def line(name: str, r: dict[str, Any]) -> str:
    def f(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    modes = f"{r['modes']}/{r['modes_total']}" if "modes" in r else "-"
    hq = f"{100 * r['high_quality']:.1f}" if "high_quality" in r else "-"
    return (f"{name:<22} {f('mae', '7.3f')} {f('spearman', '8.3f')} {f('gap', '7.3f')} {f('log_likelihood', '7.3f')}"
            f" {f('neg_entropy', '7.3f')} {modes:>6} {hq:>6} {r['steps']:>6} {r['train_seconds']:>7.1f} "
            f"{r['steps_per_second']:>6.1f}")


HEADER = f"{'run':<22} {'mae':>7} {'spearman':>8} {'gap':>7} {'ll':>7} {'-H':>7} {'modes':>6} {'hq%':>6} {'steps':>6} {'secs':>7} {'step/s':>6}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated subset of ring8,grid25,gauss")
    ap.add_argument("--divergences", action="store_true", help="also every built-in divergence, short runs")
    ap.add_argument("--short-steps", type=int, default=300, help="steps of each per-divergence run")
    ap.add_argument("--default-only", action="store_true", help="skip the default runs (with --divergences)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1,
                    help="default runs on seeds SEED..SEED+N-1, with mean, s.e. and the mixture targets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="300-step smoke run of everything asked for")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs under this directory (default: temporary)")
    ap.add_argument("--default-steps", type=int, default=None,
                    help="steps of the default runs (default: the configuration's; the table shows them)")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    bad = [s for s in sets if s not in SETS]
    if bad:
        ap.error(f"unknown set {bad[0]!r} (choose from {', '.join(SETS)})")
    grid_cfg = load_toml(ROOT / "configs" / "grid25.toml") if (ROOT / "configs" / "grid25.toml").exists() else {}
    results: dict[str, Any] = {"goals": GOALS, "default": {}, "divergences": {}, "seed": args.seed,
                               "load_average": os.getloadavg()[0]}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="fgm-fidelity-")) as tmp:
        print(HEADER, flush=True)
        if not args.default_only:
            for s in sets:
                base = grid_cfg if s == "grid25" else {}
                per_seed = []
                for seed in range(args.seed, args.seed + args.seeds):
                    cfg = merge(merge(base, SETS[s]), {"run": {"seed": seed}})
                    if args.quick or args.default_steps:
                        cfg = merge(cfg, {"run": {"steps": 300 if args.quick else args.default_steps}})
                    r = one(cfg, Path(tmp), f"default-{s}-s{seed}", args.threads)
                    per_seed.append(r)
                    print(line(f"default {s} s{seed}", r), flush=True)
                results["default"][s] = per_seed[0] if args.seeds == 1 else aggregate(per_seed)
                if args.seeds > 1:
                    print(line(f"default {s} mean", results["default"][s]), flush=True)
        if args.divergences:
            steps = 300 if args.quick else args.short_steps
            for s in sets:
                for div in BUILTIN:
                    cfg = merge(SETS[s], {"divergence": {"name": div}, "critic": {"form": "density"},
                                          "run": {"steps": steps, "seed": args.seed}})
                    if div == "alpha":
                        cfg = merge(cfg, {"divergence": {"params": {"alpha": 0.5}}})
                    try:
                        r = one(cfg, Path(tmp), f"{div}-{s}", args.threads)
                    except Exception as e:  # noqa: BLE001 - a diverging run is a result, not a crash
                        r = {"error": " ".join(str(e).split()), "steps": steps, "train_seconds": 0.0,
                             "steps_per_second": 0.0}
                    results["divergences"].setdefault(s, {})[div] = r
                    print(line(f"{div} {s}", r) if "error" not in r else f"{div + ' ' + s:<22} failed: {r['error']}",
                          flush=True)
    for s, r in results["default"].items():
        met = {k: (r.get(k) is not None and (r[k] >= v if k == "spearman" else r[k] <= v)) for k, v in GOALS.items()}
        print(f"default {s}: " + ", ".join(f"{k} {'met' if ok else 'MISSED'} (goal {'>=' if k == 'spearman' else '<='} "
                                            f"{GOALS[k]})" for k, ok in met.items()))
        if s in MIXTURE_TARGETS and r.get("modes") is not None:
            t = MIXTURE_TARGETS[s]
            seeds = r.get("per_seed", [r])
            ok = all(x["modes"] == x["modes_total"] and x["high_quality"] >= t["hq"] for x in seeds)
            print(f"default {s}: mixture target ({len(seeds)} seeds, each with every mode and >= {100 * t['hq']:.0f}% "
                  f"high quality, at most {t['seconds']} s per seed on an idle 2-core machine): quality "
                  f"{'met' if ok else 'MISSED'}, worst seed {min(x['modes'] for x in seeds)} modes and "
                  f"{100 * min(x['high_quality'] for x in seeds):.1f}%; slowest seed "
                  f"{max(x['train_seconds'] for x in seeds):.0f} s at load {results['load_average']:.1f}")
    if args.json:  # merged into an existing file: sets can run in separate processes
        args.json.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        for part in ("default", "divergences"):
            results[part] = {**old.get(part, {}), **results[part]}
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
