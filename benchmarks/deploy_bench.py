"""Deployment figures: ONNX export time (dynamo alone, as before, against the default
``auto``), peak memory of the likelihood at large batches (one call per 512 rows with all
K, as before, against the manifest's rows per call), and the effect of ``threads``.

    python benchmarks/deploy_bench.py                   # trains small ring8 and dcgan runs first (about 5 min)
    python benchmarks/deploy_bench.py --parts export    # parts: export, memory, threads
    python benchmarks/deploy_bench.py --quick           # smoke run

Every figure comes from a fresh process: export wall time includes importing torch's
exporter (what ``fgm export`` costs), memory is the process's peak RSS
(``ru_maxrss``), threads are samples/s of the dcgan generator at batch 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PRESETS = {  # the ring8 default networks (MLP 3 x 128) and the dcgan preset on 28x28 shapes
    "ring8": ({"run": {"steps": 50}}, None),
    "dcgan": ({"data": {"dataset": "shapes", "options": {"n_train": 1024, "n_test": 256}}, "run": {"steps": 20}},
              ["dcgan"]),
}


def worker(args: argparse.Namespace) -> None:
    t = time.perf_counter()
    if args.worker == "export":
        import fgm_core as fgm

        m = fgm.export(args.run, args.out, exporter=args.exporter)
        out = {"wall_s": time.perf_counter() - t, "export_seconds": m["export_seconds"],
               "graphs": {g["role"]: {"bytes": g["bytes"], "torch_exporter": g["torch_exporter"]} for g in m["graphs"]}}
    else:
        import numpy as np

        from fgm_onnx.runtime import OnnxRuntimeModel

        rt = OnnxRuntimeModel(args.out, device="cpu", threads=args.threads, rows_per_call=args.rows)
        if args.worker == "memory":
            x = rt.sample(args.batch, seed=0)
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            ll = rt.log_likelihood(x, k=args.k)
            out = {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_call_mb": base / 1024,
                   "seconds": time.perf_counter() - t, "finite": bool(np.isfinite(ll).all())}
        else:
            rng = np.random.default_rng(0)
            feeds = {"z": rng.standard_normal((1024, rt.latent_dim), dtype=np.float32),
                     "eps": rng.standard_normal((1024, *rt.data_shape), dtype=np.float32)}
            rt.run("generator", feeds)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                rt.run("generator", feeds)
                times.append(time.perf_counter() - t)
            times.sort()
            out = {"samples_per_s": 1024 / times[len(times) // 2]}
    print(json.dumps(out))


def _spawn(*argv: str, threads_env: bool = True) -> dict:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(HERE), *argv], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="export,memory,threads")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path)
    p.add_argument("--json", type=Path, default=Path("deploy_bench.json"))
    p.add_argument("--worker", choices=["export", "memory", "threads"], help=argparse.SUPPRESS)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--exporter", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import fgm_core as fgm

    parts = set(args.parts.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="fgm-deploy-"))
    runs = {}
    for name, (cfg, presets) in PRESETS.items():
        cfg = json.loads(json.dumps(cfg))
        cfg["run"].update({"out_dir": str(work / "runs"), "name": name, "progress": False, "tensorboard": False,
                           "eval_samples": 256, "checkpoint_every": 1000})
        if args.quick:
            cfg["run"]["steps"] = 2
        path = work / "runs" / name
        runs[name] = path if (path / "model.safetensors").exists() else fgm.train(cfg, presets=presets, progress=False).path
    result: dict = {"cpu_count": os.cpu_count()}
    if "export" in parts:
        rows = []
        for name, path in runs.items():
            for exporter in ("dynamo", "auto"):
                r = _spawn("--worker", "export", "--run", str(path), "--out", str(work / f"export-{name}-{exporter}"),
                           "--exporter", exporter)
                rows.append({"model": name, "exporter": exporter, **r})
                print(f"export {name:<6} {exporter:<7} {r.get('wall_s', float('nan')):6.1f} s (import fgm_core + fgm.export) "
                      f"({r.get('export_seconds', float('nan')):.1f} s by the manifest) "
                      f"graphs {r.get('graphs', r.get('error'))}", flush=True)
        result["export"] = rows
    export_dcgan = work / "export-dcgan-auto"
    if not (export_dcgan / "manifest.json").exists():
        fgm.export(runs["dcgan"], export_dcgan)
    if "memory" in parts:
        rows = []
        sizes = [(200, 10)] if args.quick else [(1000, 50), (4096, 50)]
        for batch, k in sizes:
            for label, rows_per_call in (("before: 512 rows x all K per call", 512 * k), ("after: manifest rows", None)):
                argv = ["--worker", "memory", "--out", str(export_dcgan), "--batch", str(batch), "--k", str(k)]
                if rows_per_call:
                    argv += ["--rows", str(rows_per_call)]
                r = _spawn(*argv)
                rows.append({"batch": batch, "k": k, "calls": label, **r})
                print(f"likelihood dcgan batch {batch} K {k}, {label:<36} peak {r.get('peak_mb', float('nan')):7.0f} MB "
                      f"in {r.get('seconds', float('nan')):.1f} s {r.get('error', '')}", flush=True)
        result["memory"] = rows
    if "threads" in parts:
        rows = []
        for threads in (None, 1, 2):
            r = _spawn("--worker", "threads", "--out", str(export_dcgan), *(["--threads", str(threads)] if threads else []),
                       "--repeats", "3" if args.quick else "7")
            rows.append({"threads": threads or "onnxruntime default", **r})
            print(f"dcgan sample batch 1024, threads {threads or 'default':<8} {r.get('samples_per_s', float('nan')):8.0f} "
                  f"samples/s", flush=True)
        result["threads"] = rows
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
