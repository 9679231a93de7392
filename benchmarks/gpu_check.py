"""The GPU path in one run: CUDA training (fp32, bf16), resume, ONNX Runtime's CUDA provider
with IO binding against the CPU, 2-process NCCL training, and throughput figures.

    python benchmarks/gpu_check.py                    # on a CUDA machine: everything, a few minutes
    python benchmarks/gpu_check.py --quick            # tiny sizes (smoke run)
    python benchmarks/gpu_check.py --cpu-only --quick # the same code on device=cpu and the CPU provider (CI)

Checks, each timed and reported as ok / FAILED / skipped with what was measured:

1. train the default model (ring8, MLPs, density critic) and the dcgan preset (28x28
   shapes) on the device in fp32 and bf16 (bf16 autocast applies on CUDA only; on the CPU
   ``run.precision = "bf16"`` trains in fp32, which this script states);
2. resume: stop the default model half way, ``--resume`` it on the device, and compare the
   final weights with an uninterrupted run (bit for bit on the CPU; on CUDA within 1e-4,
   since cuBLAS may sum in another order);
3. export every graph of both fp32 runs (with the exporter's own parity check on the CPU)
   and run each graph on the device's execution provider (CUDA: IO binding) against the
   CPU provider on the same inputs;
4. 2-process training with NCCL when two GPUs exist (``fgm train --nproc 2 --device cuda``);
   otherwise it says why it did not run;
5. throughput: training steps/s per check above (the training loop's own clock in
   metrics.jsonl), and sampling samples/s at batch 1 and 1024 for torch eager
   (``model.generate`` + scaling) and ONNX Runtime (the generator graph).

Prints a table and writes JSON (``--json``). Exit status 1 when any check failed.
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
import traceback
from pathlib import Path

import numpy as np

QUICK = {"default": {"model": {"options": {"hidden": 16, "depth": 1}}, "steps": 6},
         "dcgan": {"model": {"options": {"channels": 4, "z_hidden": 8}},
                   "data": {"options": {"n_train": 128, "n_test": 32}}, "steps": 4, "batch": 16}}
FULL = {"default": {"model": {}, "steps": 400},
        "dcgan": {"model": {}, "data": {"options": {"n_train": 4096, "n_test": 512}}, "steps": 100, "batch": 64}}


class Report:
    def __init__(self) -> None:
        self.checks: list[dict] = []
        self.throughput: list[dict] = []

    def check(self, name: str, fn, *args, **kw):
        t = time.perf_counter()
        try:
            detail, value = fn(*args, **kw)
            entry = {"name": name, "status": "skipped" if detail.startswith("skipped") else "ok", "detail": detail}
        except Exception as e:  # noqa: BLE001 - a failed check is reported, the others still run
            value = None
            entry = {"name": name, "status": "FAILED", "detail": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-2000:]}
        entry["seconds"] = round(time.perf_counter() - t, 2)
        self.checks.append(entry)
        print(f"  {entry['status']:>7}  {name:<26} {entry['seconds']:7.1f} s  {entry['detail']}", flush=True)
        return value


def _config(kind: str, size: dict, device: str, precision: str, work: Path, name: str, steps: int | None = None) -> dict:
    s = size[kind]
    cfg = {"model": json.loads(json.dumps(s["model"])),
           "run": {"steps": steps or s["steps"], "device": device, "precision": precision, "out_dir": str(work / "runs"),
                   "name": name, "progress": False, "tensorboard": False, "eval_samples": 256,
                   "checkpoint_every": max(1, (steps or s["steps"]) // 2), "seed": 0}}
    if kind == "dcgan":
        cfg["data"] = {"dataset": "shapes", **s["data"]}
        cfg["optim"] = {"batch_size": s["batch"]}
    return cfg


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def train_check(kind: str, size: dict, device: str, precision: str, work: Path):
    import fgm_core as fgm

    name = f"{kind}-{precision}"
    t = time.perf_counter()
    run = fgm.train(_config(kind, size, device, precision, work, name), presets=["dcgan"] if kind == "dcgan" else None,
                    progress=False)
    _sync(device)
    secs = time.perf_counter() - t
    steps = run.config.run.steps
    note = "" if device.startswith("cuda") or precision == "fp32" else " (bf16 autocast is CUDA-only: fp32 here)"
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not all(np.isfinite(v) for m in rows for v in m.values() if isinstance(v, float)):
        raise RuntimeError(f"non-finite metrics in {run.path / 'metrics.jsonl'}")
    last = rows[-1]  # "time": seconds since the training loop started (no setup, no final evaluation)
    rate = last["step"] / last["time"] if last.get("time") else steps / secs
    return (f"{steps} steps, {rate:.1f} steps/s in the loop ({secs:.1f} s with setup and evaluation){note}",
            (run, rate))


def resume_check(size: dict, device: str, work: Path):
    import torch
    from safetensors.torch import load_file

    import fgm_core as fgm

    steps = size["default"]["steps"]
    half = max(1, steps // 2)
    # a constant learning rate: a schedule spans run.steps, so a run stopped at `half` steps and
    # resumed to `steps` would follow another schedule than the uninterrupted one
    full_cfg = _config("default", size, device, "fp32", work, "resume-full")
    part_cfg = _config("default", size, device, "fp32", work, "resume-part", steps=half)
    for c in (full_cfg, part_cfg):
        c.setdefault("optim", {})["schedule"] = "constant"
    full = fgm.train(full_cfg, progress=False)
    part = fgm.train(part_cfg, progress=False)
    resumed = fgm.train(resume=part.path, overrides=[f"run.steps={steps}"], progress=False)
    a, b = load_file(str(full.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    exact = device == "cpu"
    if (exact and diff != 0.0) or diff > 1e-4:
        raise RuntimeError(f"resumed weights differ from the uninterrupted run by {diff:.3g}")
    del torch
    return f"stopped at {half}, resumed to {steps}: max |weight diff| {diff:.3g} vs uninterrupted", None


def export_check(runs: list, device: str, work: Path, batches: list[int]):
    import fgm_core as fgm
    from fgm_onnx.runtime import OnnxRuntimeModel

    parts = []
    exports = []
    for run in runs:
        out = work / f"export-{run.path.name}"
        t = time.perf_counter()
        manifest = fgm.export(run, out)
        secs = time.perf_counter() - t
        exports.append((run, out))
        cpu = OnnxRuntimeModel(out, device="cpu")
        dev = OnnxRuntimeModel(out, device="cuda" if device.startswith("cuda") else "cpu")
        rng = np.random.default_rng(0)
        n, k = 64, 8
        x = cpu.sample(n, seed=1)
        worst = {}
        for g in manifest["graphs"]:
            feeds = {}
            for spec in g["inputs"]:
                shape = [n if d == "batch" else k if d == "k" else d for d in spec["shape"]]
                feeds[spec["name"]] = x if spec["name"] == "x" else rng.standard_normal(shape, dtype=np.float32)
            want = cpu.run(g["role"], feeds)
            got = dev.run(g["role"], feeds)  # CUDA: IO binding (OrtValues on the device)
            for spec, w, o in zip(g["outputs"], want, got):
                scale = max(1.0, float(np.abs(w).max()))
                d = float(np.abs(w - o).max())
                worst[f"{g['role']}.{spec['name']}"] = d
                if not d <= 1e-3 * scale:  # TF32 / other kernels on the GPU
                    raise RuntimeError(f"{g['role']} output {spec['name']} on {dev.provider} differs from the CPU by "
                                       f"{d:.3g} (allowed {1e-3 * scale:.3g})")
        parts.append(f"{run.path.name}: {len(manifest['graphs'])} graphs in {secs:.1f} s, {dev.provider}, "
                     f"max |diff| vs CPU {max(worst.values()):.2g}")
    return "; ".join(parts), exports


def nccl_check(device: str, work: Path, size: dict):
    import torch

    if not device.startswith("cuda"):
        return "skipped: --cpu-only (NCCL needs two GPUs)", None
    count = torch.cuda.device_count()
    if count < 2:
        return f"skipped: {count} GPU visible, NCCL training needs 2", None
    steps = size["default"]["steps"]
    cmd = [sys.executable, "-m", "fgm_core.cli", "train", "--nproc", "2", "--device", "cuda", "--steps", str(steps),
           "--out", str(work / "runs"), "--name", "nccl", "-q"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"2-process training failed: {proc.stderr.strip()[-500:]}")
    secs = time.perf_counter() - t
    return f"2 processes x 1 GPU, NCCL, {steps} steps in {secs:.1f} s ({steps / secs:.1f} steps/s incl. start-up)", None


def _timed(fn, seconds: float) -> float:
    for _ in range(3):
        fn()
    n, t = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t > seconds and n >= 5:
            return (time.perf_counter() - t) / n


def throughput(runs: list, exports: list, device: str, batches: list[int], seconds: float) -> list[dict]:
    """Sampling samples/s of every run in torch eager, and through ONNX Runtime where it was
    exported (a failed export leaves the torch figures)."""
    import torch

    from fgm_onnx.runtime import OnnxRuntimeModel

    rows = []
    exported = {id(run): out for run, out in exports}
    for run in runs:
        model = run.model.to(device).eval()
        sc = run.info.scaling
        out = exported.get(id(run))
        rt = OnnxRuntimeModel(out, device="cuda" if device.startswith("cuda") else "cpu") if out else None
        for b in batches:
            rng = np.random.default_rng(0)
            z = rng.standard_normal((b, run.model.latent_dim), dtype=np.float32)
            eps = rng.standard_normal((b, *run.info.shape), dtype=np.float32)
            zt, et = torch.from_numpy(z).to(device), torch.from_numpy(eps).to(device)

            def eager():
                with torch.inference_mode():
                    y = sc.to_data(model.generate(zt, et))
                _sync(device)
                return y

            feeds = {"z": z, "eps": eps}
            backends = [("torch", eager)] + ([("onnxruntime", lambda: rt.run("generator", feeds))] if rt else [])
            for backend, fn in backends:
                per = _timed(fn, seconds)
                rows.append({"model": run.path.name, "backend": backend, "batch": b,
                             "provider": rt.provider if backend == "onnxruntime" else device,  # type: ignore[union-attr]
                             "samples_per_s": b / per, "ms_per_call": 1000 * per})
        run.model.to("cpu")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-only", action="store_true", help="device=cpu and the CPU provider (the CI part)")
    p.add_argument("--quick", action="store_true", help="tiny networks and few steps")
    p.add_argument("--work", type=Path, help="where runs and exports go (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="results file")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per throughput figure")
    args = p.parse_args()

    import torch

    import fgm_core as fgm  # noqa: F401 - fail early when the package is missing

    if args.cpu_only:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise SystemExit("gpu_check: no CUDA device is visible (run with --cpu-only for the CPU part)")
    size = QUICK if args.quick else FULL
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 2.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="fgm-gpu-check-"))
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    print(f"gpu_check on {device}{f' ({gpu})' if gpu else ''}, torch {torch.__version__}, "
          f"{'quick' if args.quick else 'full'} sizes, work dir {work}", flush=True)
    rep = Report()
    trained = {}
    for kind in ("default", "dcgan"):
        for precision in ("fp32", "bf16"):
            out = rep.check(f"train {kind} {precision}", train_check, kind, size, device, precision, work)
            if out is not None:
                trained[(kind, precision)] = out
                rep.throughput.append({"model": f"{kind}-{precision}", "backend": "torch train", "batch": None,
                                       "steps_per_s": out[1], "provider": device})
    rep.check("resume", resume_check, size, device, work)
    runs = [trained[(k, "fp32")][0] for k in ("default", "dcgan") if (k, "fp32") in trained]
    exports = rep.check("export + parity", export_check, runs, device, work, [1, 1024]) or []
    rep.check("nccl", nccl_check, device, work, size)
    try:
        rep.throughput += throughput(runs, exports, device, [1, 1024], seconds)
    except Exception as e:  # noqa: BLE001
        rep.checks.append({"name": "throughput", "status": "FAILED", "detail": f"{type(e).__name__}: {e}"})
    print("\nthroughput")
    print(f"{'model':<14} {'backend':<12} {'provider':<22} {'batch':>6} {'steps/s':>9} {'samples/s':>12}")
    for r in rep.throughput:
        steps = f"{r['steps_per_s']:.1f}" if "steps_per_s" in r else "-"
        samples = f"{r['samples_per_s']:.0f}" if "samples_per_s" in r else "-"
        print(f"{r['model']:<14} {r['backend']:<12} {r['provider']:<22} {str(r['batch'] or '-'):>6} {steps:>9} "
              f"{samples:>12}")
    failures = [c["name"] for c in rep.checks if c["status"] == "FAILED"]
    result = {"device": device, "gpu": gpu, "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
              "quick": args.quick, "torch": torch.__version__, "machine": platform.platform(),
              "checks": rep.checks, "throughput": rep.throughput, "failures": failures}
    try:
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'all checks passed' if not failures else 'FAILED: ' + ', '.join(failures)}; wrote {args.json}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("FGM_NO_PLUGIN_COMMANDS", "1")
    main()
