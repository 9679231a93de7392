"""Sampling throughput: ONNX Runtime (the exported generator graph) against PyTorch eager.

    python benchmarks/onnx_vs_torch.py                       # trains a small ring8 run first
    python benchmarks/onnx_vs_torch.py --run runs/RUN_DIR    # or takes a trained run
    python benchmarks/onnx_vs_torch.py --preset dcgan        # DCGAN on 28x28 shapes

Each (backend, batch size) is measured in fresh subprocesses (``--launches``, median reported), CPU only, with the same
number of intra-op threads (``--threads``, default 2): PyTorch eager runs
``model.generate(z, eps)`` plus the data scaling under ``torch.inference_mode``; ONNX
Runtime runs ``generator.onnx`` through :class:`fgm_onnx.runtime.OnnxRuntimeModel` with its
defaults (``--spinning on``: idle intra-op threads spin briefly instead of sleeping), in a
process where torch is not imported. Spinning threads slow whatever else runs on the same
cores, which is why each backend has a process of its own; ``--spinning off`` measures the
runtime as configured for shared machines. Both get the same pre-drawn noise,
so what is timed is the generator itself. Prints a table and writes JSON (``--json``),
including the export time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PRESETS = {
    "ring8": {"data": {"dataset": "ring8"}, "model": {"architecture": "mlp", "latent_dim": 2}},
    "dcgan": {"data": {"dataset": "shapes", "options": {"n_train": 2048, "n_test": 256}},
              "model": {"architecture": "dcgan", "latent_dim": 32}, "optim": {"batch_size": 64}},
}


# --------------------------------------------------------------------------- workers
def _time_loop(fn, seconds: float, batch: int) -> dict:
    for _ in range(3):  # warm-up
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > seconds and len(times) >= 5:
            break
    times.sort()
    total = sum(times)
    return {"calls": len(times), "samples_per_s": batch * len(times) / total,
            "median_ms": 1000 * times[len(times) // 2], "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))]}


def worker(args: argparse.Namespace) -> None:
    import numpy as np

    meta = json.loads((Path(args.export) / "manifest.json").read_text())
    d, shape = meta["latent_dim"], tuple(meta["data_shape"])
    rng = np.random.default_rng(0)
    z = rng.standard_normal((args.batch, d), dtype=np.float32)
    eps = rng.standard_normal((args.batch, *shape), dtype=np.float32)
    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
        import fgm_core as fgm

        run = fgm.load_run(args.run)
        model, sc = run.model, run.info.scaling
        zt, et = torch.from_numpy(z), torch.from_numpy(eps)
        gaussian = model.generator == "gaussian"

        def fn():
            with torch.inference_mode():
                return sc.to_data(model.generate(zt, et if gaussian else None))

        version = torch.__version__
    else:
        if "torch" in sys.modules:
            raise SystemExit("the onnxruntime worker must not import torch")
        import onnxruntime

        from fgm_onnx.runtime import OnnxRuntimeModel

        rt = OnnxRuntimeModel(args.export, device="cpu", threads=args.threads, spinning=args.spinning == "on")
        names = [i["name"] for i in rt.graphs["generator"].inputs]
        feeds = {"z": z, "eps": eps} if "eps" in names else {"z": z}

        def fn():
            return rt.run("generator", feeds)

        version = onnxruntime.__version__
    out = _time_loop(fn, args.seconds, args.batch)
    out.update({"backend": args.worker, "batch": args.batch, "threads": args.threads, "version": version,
                "spinning": args.spinning if args.worker == "onnxruntime" else None,
                "torch_imported": "torch" in sys.modules})
    print(json.dumps(out))


# --------------------------------------------------------------------------- driver
def _spawn(kind: str, run: Path, export: Path, batch: int, threads: int, seconds: float, spinning: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if kind == "torch":  # torch.set_num_threads sets the rest; ORT takes its threads from the session
        # options only: OMP_NUM_THREADS in its environment slowed it by a quarter at batch 1 (see README)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(HERE), "--worker", kind, "--run", str(run), "--export", str(export),
           "--batch", str(batch), "--threads", str(threads), "--seconds", str(seconds), "--spinning", spinning]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run directory (default: train one)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="ring8", help="what to train without --run")
    p.add_argument("--steps", type=int, default=50, help="training steps without --run")
    p.add_argument("--export", type=Path, help="(worker) the export directory")
    p.add_argument("--work", type=Path, help="where runs and exports go (default: a temporary directory)")
    p.add_argument("--batches", default="1,1024", help="batch sizes, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--launches", type=int, default=3,
                   help="processes per (backend, batch); the median is reported (a process's speed varies from "
                        "launch to launch on these VMs, by up to 30%% at batch 1)")
    p.add_argument("--spinning", choices=["on", "off"], default="on",
                   help="ONNX Runtime intra-op thread spinning (on: its default)")
    p.add_argument("--json", type=Path, default=Path("onnx_vs_torch.json"), help="results file")
    p.add_argument("--worker", choices=["torch", "onnxruntime"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import fgm_core as fgm

    work = args.work or Path(tempfile.mkdtemp(prefix="fgm-bench-"))
    if args.run is None:
        cfg = json.loads(json.dumps(PRESETS[args.preset]))
        cfg["run"] = {"steps": args.steps, "out_dir": str(work / "runs"), "progress": False, "tensorboard": False,
                      "eval_samples": 256, "checkpoint_every": args.steps}
        t = time.perf_counter()
        run = fgm.train(cfg, progress=False)
        print(f"trained {run.path} ({args.steps} steps, {time.perf_counter() - t:.1f} s)")
    else:
        run = fgm.load_run(args.run)
    export = work / "export"
    t = time.perf_counter()
    manifest = fgm.export(run, export)
    export_wall = time.perf_counter() - t
    print(f"exported to {export}: {export_wall:.1f} s wall, {manifest['export_seconds']:.1f} s in the exporter "
          f"({len(manifest['graphs'])} graphs, parity checked)")

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        launches: dict[str, list[dict]] = {"torch": [], "onnxruntime": []}
        for _ in range(args.launches):  # alternating, each a fresh process
            for kind in launches:
                launches[kind].append(_spawn(kind, run.path, export, batch, args.threads, args.seconds, args.spinning))
        for kind, runs in launches.items():
            runs.sort(key=lambda r: r["samples_per_s"])
            rows.append({**runs[len(runs) // 2], "launches": [r["samples_per_s"] for r in runs]})
    print()
    print(f"sampling throughput, CPU, {args.threads} threads, ORT spinning {args.spinning}, separate processes "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(f"median of {args.launches} launches per row; all launches in the JSON")
    print(f"{'batch':>6} {'backend':>12} {'samples/s':>12} {'median ms':>10} {'p90 ms':>9} {'speed-up':>9}  launches")
    for batch in sorted({r["batch"] for r in rows}):
        base = next(r for r in rows if r["batch"] == batch and r["backend"] == "torch")
        for r in (x for x in rows if x["batch"] == batch):
            speed = r["samples_per_s"] / base["samples_per_s"]
            print(f"{batch:>6} {r['backend']:>12} {r['samples_per_s']:>12.0f} {r['median_ms']:>10.3f} "
                  f"{r['p90_ms']:>9.3f} {speed:>8.2f}x  {', '.join(f'{v:.0f}' for v in r['launches'])}")
    result = {
        "run": str(run.path), "config": run.config.to_dict(), "export_dir": str(export),
        "export_seconds_wall": export_wall, "export_seconds": manifest["export_seconds"],
        "graphs": [{"role": g["role"], "bytes": g["bytes"], "max_abs_diff": g["max_abs_diff"]}
                   for g in manifest["graphs"]],
        "threads": args.threads, "spinning": args.spinning, "launches": args.launches, "cpu_count": os.cpu_count(), "machine": platform.platform(), "results": rows,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
