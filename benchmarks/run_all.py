"""Every benchmark of issue 7 in one run: measures, prints one summary table against the
targets, and writes all figures to one JSON file.

    python benchmarks/run_all.py                          # everything (about 40 min on 2 cores)
    python benchmarks/run_all.py --parts train,onnx       # some parts: train, vae, onnx, coverage, fidelity
    python benchmarks/run_all.py --quick                  # smoke run of every part (a few minutes)

Parts (each is also a script of its own, see benchmarks/README.md):
- ``train``: ``train_bench.py``: 1. trainer overhead, 2. fraction of the GEMM roof, 6. peak memory.
- ``vae``: ``vae_vs_pythae.py``: 3. the VAE special case against pythae (needs ``pip install pythae``).
- ``onnx``: ``onnx_vs_torch.py`` for the ring8 MLP and the DCGAN generator: 4. ONNX Runtime vs eager.
- ``coverage``: ``fgm compare`` with ``benchmarks/coverage/{ring8,grid25}.toml``, 5 seeds:
  5. mode coverage and wall time per seed.
- ``fidelity``: ``estimator_fidelity.py``: the density estimator l(x) and the model likelihood
  against the exact log p_D(x) on ring8, grid25 and a 2-D Gaussian (default runs, then every
  built-in divergence with the density critic at a short budget).

Each part runs in its own subprocess, one after the other (timings are only comparable on an
otherwise idle machine; the load average is recorded). Output: ``--out`` (default
``benchmarks/results``) gets each part's JSON and ``summary.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from fgm_core.config import load_toml

HERE = Path(__file__).resolve().parent
PARTS = ("train", "vae", "onnx", "coverage", "fidelity")
COVERAGE = ("ring8", "grid25")


def sh(cmd: list[str], log: Path) -> int:
    """Run one benchmark, echoing its output and keeping a copy in ``log``."""
    print(f"$ {' '.join(cmd)}", flush=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "FGM_NO_PROGRESS": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
        return proc.wait()


def run_parts(args: argparse.Namespace, out: Path) -> dict:
    py, q = sys.executable, args.quick
    status: dict[str, str] = {}
    if "train" in args.parts:
        cmd = [py, str(HERE / "train_bench.py"), "--threads", str(args.threads), "--json", str(out / "train_bench.json")]
        status["train"] = "ok" if sh(cmd + (["--quick"] if q else []), out / "train_bench.log") == 0 else "failed"
    if "vae" in args.parts:
        if importlib.util.find_spec("pythae") is None:
            status["vae"] = "not run: pythae is not installed here (pip install pythae; it works with torch 2.13)"
            print(status["vae"])
        else:
            cmd = [py, str(HERE / "vae_vs_pythae.py"), "--threads", str(args.threads), "--json", str(out / "vae_vs_pythae.json")]
            cmd += ["--quick", "--epochs", "1"] if q else []
            status["vae"] = "ok" if sh(cmd, out / "vae_vs_pythae.log") == 0 else "failed"
    if "onnx" in args.parts:
        for preset in ("ring8", "dcgan"):
            cmd = [py, str(HERE / "onnx_vs_torch.py"), "--preset", preset, "--threads", str(args.threads),
                   "--json", str(out / f"onnx_{preset}.json")] + (["--seconds", "0.5"] if q else [])
            status[f"onnx_{preset}"] = "ok" if sh(cmd, out / f"onnx_{preset}.log") == 0 else "failed"
    if "coverage" in args.parts:
        fgm = str(Path(py).parent / "fgm")
        for ds in COVERAGE:
            cmd = [fgm, "compare", "-c", str(HERE / "coverage" / f"{ds}.toml"), "--seeds", "2" if q else "5",
                   "--threads", str(args.coverage_threads), "-q", "-o", str(out / f"coverage_{ds}")]
            cfg = load_toml(HERE / "coverage" / f"{ds}.toml")
            cmd += ["--divergences", cfg["divergence"]["name"], "--critic", cfg["critic"]["form"]]
            cmd += ["--steps", "300"] if q else []
            status[f"coverage_{ds}"] = "ok" if sh(cmd, out / f"coverage_{ds}.log") == 0 else "failed"
    if "fidelity" in args.parts:
        cmd = [py, str(HERE / "estimator_fidelity.py"), "--divergences", "--threads", "1",
               "--json", str(out / "estimator_fidelity.json")] + (["--quick"] if q else [])
        status["fidelity"] = "ok" if sh(cmd, out / "estimator_fidelity.log") == 0 else "failed"
    return status


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def summarise(out: Path) -> list[dict]:
    """One row per figure: what, measured, target, met."""
    rows: list[dict] = []

    def add(item: str, what: str, value: float | None, shown: str, target: str, met: bool | None) -> None:
        rows.append({"item": item, "what": what, "value": value, "measured": shown, "target": target, "met": met})

    tb = _load(out / "train_bench.json")
    if tb:
        for r in tb.get("overhead", []):
            paired = r["ratio_paired_median"]  # adjacent fgm/hand repeats: cancels the machine's drift
            add("1", f"trainer overhead, {r['config']}", paired, f"{paired:.3f} paired (ratio of medians {r['ratio']:.3f})",
                ">= 0.95", paired >= 0.95)
        if "roof" in tb:
            r = tb["roof"]
            add("2", "fraction of the GEMM roof, mlp 512 x 3, batch 1024", r["fraction_of_roof"],
                f"{r['fraction_of_roof']:.2f} ({r['achieved_gflop_per_s']:.0f} of {r['roof_gflop_per_s']:.0f} GFLOP/s)",
                ">= 0.6", r["fraction_of_roof"] >= 0.6)
        for r in tb.get("memory", []):
            add("6", f"peak RSS: {r['what']}", r["maxrss_mb"], f"{r['maxrss_mb']:.0f} MB", "reported", None)
    vae = _load(out / "vae_vs_pythae.json")
    if vae:
        for r in vae["results"]:
            if "target_met" in r:
                add("3", f"VAE vs pythae, batch {r['batch']} ({r['name']})", r["throughput_vs_pythae"],
                    f"{r['throughput_vs_pythae']:.2f}x samples/s, ELBO {r['elbo_minus_pythae']:+.2f} nats",
                    ">= 2x at ELBO >= pythae - 0.5", r["target_met"])
    for preset in ("ring8", "dcgan"):
        ox = _load(out / f"onnx_{preset}.json")
        if not ox:
            continue
        for batch in sorted({r["batch"] for r in ox["results"]}):
            t = next(r for r in ox["results"] if r["batch"] == batch and r["backend"] == "torch")
            o = next(r for r in ox["results"] if r["batch"] == batch and r["backend"] == "onnxruntime")
            ratio = o["samples_per_s"] / t["samples_per_s"]
            need = 3.0 if batch == 1 else 1.0
            add("4", f"ONNX Runtime / eager, {preset} generator, batch {batch}", ratio,
                f"{ratio:.2f}x ({o['samples_per_s']:,.0f} vs {t['samples_per_s']:,.0f} samples/s)", f">= {need:g}x",
                ratio >= need if batch in (1, 1024) else None)
    for ds in COVERAGE:
        cv = _load(out / f"coverage_{ds}" / "results.json")
        if not cv:
            continue
        runs = cv["runs"]
        n = len(runs)
        modes = sum(r["modes_captured"] for r in runs) / n
        hq = sum(r["high_quality"] for r in runs) / n
        total = runs[0]["modes_total"]
        wall = sum(r.get("wall_seconds", r["train_seconds"]) for r in runs) / n
        add("5", f"mode coverage {ds}, {n} seeds ({runs[0]['divergence']}, {runs[0]['critic']} critic)", modes,
            f"{modes:.1f}/{total} modes, {100 * hq:.1f}% high quality, {wall:.0f} s per seed",
            f"{total}/{total} modes, >= 95% HQ, minutes per seed", modes >= total and hq >= 0.95)
    fid = _load(out / "estimator_fidelity.json")
    if fid:
        goals = fid["goals"]
        for ds, r in fid["default"].items():
            ok = (r.get("mae", math.inf) <= goals["mae"] and r.get("spearman", -1) >= goals["spearman"]
                  and r["gap"] <= goals["gap"])
            add("F", f"density estimator fidelity, default run, {ds} ({r['steps']} steps)", r.get("mae"),
                f"MAE {r.get('mae', math.nan):.2f} nats, Spearman {r.get('spearman', math.nan):.3f}, "
                f"likelihood gap {r['gap']:.2f} nats", "MAE <= 0.5, Spearman >= 0.9, gap <= 0.5", ok)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, short timings")
    p.add_argument("--threads", type=int, default=2, help="threads for the timed parts")
    p.add_argument("--coverage-threads", type=int, default=2, help="torch threads per coverage run")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--summarise-only", action="store_true", help="only rebuild summary.json from --out")
    args = p.parse_args()
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        print(f"error: unknown part {bad[0]!r}; parts: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    status = {} if args.summarise_only else run_parts(args, args.out)
    rows = summarise(args.out)
    summary = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "python": platform.python_version(),
                           "loadavg_before": load0, "loadavg_after": os.getloadavg()},
               "quick": args.quick, "parts": status, "seconds": time.perf_counter() - t0, "figures": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nsummary ({platform.processor() or platform.machine()}, {os.cpu_count()} cores"
          f"{', quick mode: not the real figures' if args.quick else ''})")
    print("| # | figure | measured | target | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        print(f"| {r['item']} | {r['what']} | {r['measured']} | {r['target']} | {met} |")
    for part, st in status.items():
        if st != "ok":
            print(f"{part}: {st}")
    print(f"\nwrote {args.out / 'summary.json'}")
    return 0 if all(s == "ok" or s.startswith("not run") for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
