"""Benchmark 3: the VAE special case of fgm against pythae's VAE.

Same encoder and decoder (fgm's ``mlp`` networks, 784-400-20, built once and copied, so both
start from identical weights), same data (Fashion-MNIST when its IDX files are installed,
else fgm's generated ``shapes`` images), same units (model units [-1, 1]), same batch, Adam
with the same learning rate and betas, same number of epochs, same threads, one process.

The likelihood is the same for both: pythae's ``mse`` reconstruction loss,
0.5 * ||x - decoder(z)||^2, is the Gaussian log-likelihood with sigma = 1 up to a constant,
so fgm runs with ``model.sigma = 1``, ``learn_sigma = false``. Then both minimise the same
negative ELBO, and the test ELBO is computed for both by the same function (below).

Rows:
- ``pythae VAE``: ``pythae.trainers.BaseTrainer`` (its DataLoader, no eval set).
- ``fgm kl, n_critic 0``: the plain VAE in fgm (no density estimator).
- ``fgm kl, n_critic 1``: full f-GM with kl (also trains the density estimator l(x)).
- ``fgm kl, learned sigma`` (``--learned-sigma``): fgm's own VAE, sigma learned; a better
  ELBO, not the same model as pythae's.

Throughput counts training samples per second of the training loop: pythae's
``train_step`` calls (timed by wrapping the method), fgm's loop (``metrics.jsonl`` time of
the last step, from before the first step). Whole-call wall times are reported too.

Needs pythae (``pip install pythae``; it works with torch 2.13). Usage:

    python benchmarks/vae_vs_pythae.py                       # 3 epochs x 3 launches at batch 32, 64 and 512; writes vae_vs_pythae.json
    python benchmarks/vae_vs_pythae.py --epochs 2 --quick    # smoke run on 12k images
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fgm_core as fgm
from fgm_core.build import DataInfo, load_data, make_model
from fgm_core.config import build_config
from fgm_core.plugins import PluginSet

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ELBO_DRAWS = 8
ELBO_TOLERANCE = 0.5  # nats per image: "equal" ELBO (about 0.07% of a Fashion-MNIST ELBO here)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", default="32,64,512", help="batch sizes, comma-separated (each a full comparison)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", choices=["auto", "fashion-mnist", "shapes"], default="auto")
    p.add_argument("--quick", action="store_true", help="generated shapes, 12,000 images (smoke run)")
    p.add_argument("--learned-sigma", action="store_true", help="add fgm's own VAE (sigma learned)")
    p.add_argument("--skip-critic", action="store_true", help="leave out the n_critic 1 row")
    p.add_argument("--launches", type=int, default=3,
                   help="fresh processes per (implementation, batch) for the pythae and n_critic 0 rows; median "
                        "reported (the speed of a process varies from launch to launch on these VMs)")
    p.add_argument("--json", default="vae_vs_pythae.json")
    p.add_argument("--worker", choices=["pythae", "fgm0", "fgm1", "fgmls"], help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def data_config(args: argparse.Namespace) -> tuple[dict, str]:
    use_fm = args.data == "fashion-mnist" or (args.data == "auto" and not args.quick
                                              and (FMNIST / "train-images-idx3-ubyte.gz").exists())
    if use_fm:
        opts = {"path": str(FMNIST)}
        return {"dataset": "idx", "options": opts}, "Fashion-MNIST (60,000 train / 10,000 test, 28x28)"
    n = 12_000 if args.quick else 60_000
    return ({"dataset": "shapes", "options": {"n_train": n, "n_test": 10_000}},
            f"fgm shapes, generated ({n:,} train / 10,000 test, 28x28; Fashion-MNIST not installed)")


def fgm_config(args: argparse.Namespace, data: dict, steps: int, out: Path, name: str, n_critic: int,
               learn_sigma: bool) -> dict:
    return {
        "data": data,
        "model": {"architecture": "mlp", "latent_dim": args.latent,
                  "options": {"hidden": args.hidden, "depth": 1, "activation": "relu"},
                  "sigma": 1.0, "learn_sigma": learn_sigma, "sigma_per_dim": False},
        "divergence": {"name": "kl"},
        "critic": {"form": "density", "n_critic": n_critic},
        "optim": {"lr": args.lr, "betas": [0.9, 0.999], "batch_size": args.batch},
        "run": {"steps": steps, "seed": 0, "out_dir": str(out), "name": name, "threads": args.threads,
                "checkpoint_every": steps, "log_every": max(1, steps // args.epochs), "progress": False,
                "tensorboard": False, "eval_samples": 500},
    }


@torch.no_grad()
def test_elbo(encoder, decoder, log_sigma: float, x: torch.Tensor, seed: int = 1) -> float:
    """Mean test ELBO per image, nats, model units: E_q[log N(x; dec(z), sigma^2)] (ELBO_DRAWS
    draws) minus the closed-form KL(q(z|x) || N(0, I)). The same function for every row."""
    g = torch.Generator().manual_seed(seed)
    total, n = 0.0, x.shape[0]
    d = x[0].numel()
    for i in range(0, n, 1000):
        xb = x[i:i + 1000]
        mu, logvar = encoder(xb)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        rec = torch.zeros(xb.shape[0])
        for _ in range(ELBO_DRAWS):
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            r = decoder(z).reshape(xb.shape[0], -1)
            sq = (xb.reshape(xb.shape[0], -1) - r).pow(2).sum(1)
            rec += -0.5 * sq / math.exp(2 * log_sigma) - d * log_sigma - 0.5 * d * math.log(2 * math.pi)
        total += float((rec / ELBO_DRAWS - kl).sum())
    return total / n


def run_pythae(args, nets, train: torch.Tensor, out: Path) -> dict:
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Enc(BaseEncoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Dec(BaseDecoder):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    cfg = VAEConfig(input_dim=tuple(train.shape[1:]), latent_dim=args.latent, reconstruction_loss="mse")
    model = VAE(cfg, encoder=Enc(copy.deepcopy(nets.encoder)), decoder=Dec(copy.deepcopy(nets.decoder)))
    tcfg = BaseTrainerConfig(output_dir=str(out), num_epochs=args.epochs, learning_rate=args.lr,
                             per_device_train_batch_size=args.batch, optimizer_cls="Adam",
                             optimizer_params={"betas": (0.9, 0.999)}, seed=0, no_cuda=True)
    t_wall = time.perf_counter()
    trainer = BaseTrainer(model, train_dataset=BaseDataset(train, torch.zeros(train.shape[0])), training_config=tcfg)
    loop = {"s": 0.0}
    inner = trainer.train_step

    def timed(epoch):
        t = time.perf_counter()
        try:
            return inner(epoch)
        finally:
            loop["s"] += time.perf_counter() - t

    trainer.train_step = timed
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.train()
    wall = time.perf_counter() - t_wall
    best = trainer._best_model.eval()
    samples = args.epochs * train.shape[0]
    return {"name": "pythae VAE (mse = Gaussian, sigma 1)", "samples": samples, "loop_seconds": loop["s"],
            "wall_seconds": wall, "samples_per_s": samples / loop["s"],
            "encoder": lambda x: _pythae_enc(best, x),
            "decoder": lambda z: best.decoder(z)["reconstruction"], "log_sigma": 0.0}


def _pythae_enc(model, x):
    o = model.encoder(x)
    return o["embedding"], o["log_covariance"]


def run_fgm(args, data: dict, steps: int, out: Path, name: str, n_critic: int, learn_sigma: bool,
            plugins: PluginSet, label: str) -> dict:
    cfg = fgm_config(args, data, steps, out, name, n_critic, learn_sigma)
    t_wall = time.perf_counter()
    run = fgm.train(cfg, progress=False, plugins=plugins)
    wall = time.perf_counter() - t_wall
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    loop = rows[-1]["time"]
    samples = steps * args.batch
    m = run.model
    return {"name": label, "samples": samples, "loop_seconds": loop, "wall_seconds": wall,
            "samples_per_s": samples / loop, "encoder": m.encode, "decoder": m.decoder,
            "log_sigma": float(m.log_sigma.mean()), "run": str(run.path)}


IMPLS = {"pythae": "pythae VAE (mse = Gaussian, sigma 1)",
         "fgm0": "fgm kl, n_critic 0 (sigma 1)",
         "fgm1": "fgm kl, n_critic 1 (sigma 1, + density estimator)",
         "fgmls": "fgm kl, n_critic 0, learned sigma"}


def measure(args: argparse.Namespace, impl: str, batch: int) -> dict:
    """One training run of ``impl`` at ``batch`` (this process), with its test ELBO."""
    torch.set_num_threads(args.threads)
    for name in list(logging.root.manager.loggerDict):  # pythae logs every epoch at INFO
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)
    plugins = PluginSet(only=["divergences", "mlp", "datasets", "report"], strict=True)
    data, _ = data_config(args)
    bundle = load_data(build_config({"data": data}), plugins)
    train, test = (bundle.scaling.to_model(t).float() for t in (bundle.train, bundle.test))  # as fgm trains
    args.batch = batch
    steps = args.epochs * (train.shape[0] // batch)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if impl == "pythae":
            # identical initial networks: fgm's own, built with the run's seed
            cfg0 = build_config(fgm_config(args, data, steps, tmp, "x", 0, False))
            nets = make_model(cfg0, plugins, DataInfo("x", tuple(train.shape[1:]), "image", bundle.scaling))
            row = run_pythae(args, nets, train, tmp / "pythae")
        else:
            n_critic, learn = {"fgm0": (0, False), "fgm1": (1, False), "fgmls": (0, True)}[impl]
            row = run_fgm(args, data, steps, tmp / "fgm", impl, n_critic, learn, plugins, IMPLS[impl])
            row.pop("run")
        row["test_elbo"] = test_elbo(row.pop("encoder"), row.pop("decoder"), row["log_sigma"], test)
    row.update(impl=impl, batch=batch, name=IMPLS[impl])
    return row


def spawn(args: argparse.Namespace, impl: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--batch", str(batch), "--epochs", str(args.epochs),
           "--lr", str(args.lr), "--hidden", str(args.hidden), "--latent", str(args.latent),
           "--threads", str(args.threads), "--data", args.data] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    args = parse()
    try:
        import pythae.trainers  # noqa: F401
    except ImportError:
        print("pythae is not installed: pip install pythae (it works with torch 2.13)", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(measure(args, args.worker, args.batch)))
        return 0
    _, data_desc = data_config(args)
    impls = ["pythae", "fgm0"] + ([] if args.skip_critic else ["fgm1"]) + (["fgmls"] if args.learned_sigma else [])
    load0 = os.getloadavg()[0]
    results = []
    print(f"data: {data_desc}; {args.epochs} epochs, {args.threads} threads, {args.launches} launches", flush=True)
    for batch in [int(b) for b in args.batches.split(",")]:
        runs: dict[str, list[dict]] = {k: [] for k in impls}
        for launch in range(args.launches):  # fresh processes, implementations alternating
            for impl in impls:
                if impl in ("pythae", "fgm0") or launch == 0:  # the rows with a target are repeated
                    runs[impl].append(spawn(args, impl, batch))
        rows = []
        for impl in impls:
            rs = sorted(runs[impl], key=lambda r: r["samples_per_s"])
            rows.append({**rs[len(rs) // 2], "launches": [r["samples_per_s"] for r in runs[impl]]})
        for r in rows:
            r["throughput_vs_pythae"] = r["samples_per_s"] / rows[0]["samples_per_s"]
            r["elbo_minus_pythae"] = r["test_elbo"] - rows[0]["test_elbo"]
            if r["impl"] == "fgm0":
                r["target_met"] = r["throughput_vs_pythae"] >= 2.0 and r["elbo_minus_pythae"] >= -ELBO_TOLERANCE
            print(f"  batch {batch}: {r['name']}: {r['samples_per_s']:,.0f} samples/s "
                  f"(launches: {', '.join(f'{v:,.0f}' for v in r['launches'])}), ELBO {r['test_elbo']:.2f}", flush=True)
        results += rows
    load1 = os.getloadavg()[0]

    print()
    print(f"vae_vs_pythae: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {load0:.2f} before / {load1:.2f} after")
    print(f"data: {data_desc}; mlp 784-{args.hidden}-{args.latent}, {args.epochs} epochs, "
          f"Adam lr {args.lr}; test ELBO over the whole test set, {ELBO_DRAWS} posterior draws")
    print()
    print(f"samples/s: median of {args.launches} launches (one for the n_critic 1 row); ELBO of that launch")
    print("| batch | implementation | train samples/s | vs pythae | test ELBO (nats, model units) | ELBO - pythae | "
          "loop s | wall s | target (>= 2x, ELBO >= pythae - 0.5) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        target = {True: "met", False: "missed"}.get(r.get("target_met"), "")
        print(f"| {r['batch']} | {r['name']} | {r['samples_per_s']:,.0f} | {r['throughput_vs_pythae']:.2f}x | "
              f"{r['test_elbo']:.2f} | {r['elbo_minus_pythae']:+.2f} | {r['loop_seconds']:.1f} | "
              f"{r['wall_seconds']:.1f} | {target} |")
    out = {"benchmark": "vae_vs_pythae", "machine": {"platform": platform.platform(), "machine": platform.machine(),
           "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
           "python": platform.python_version(), "load_before": load0, "load_after": load1},
           "data": data_desc, "args": vars(args), "elbo_draws": ELBO_DRAWS, "results": results,
           "target": f"fgm (sigma 1, n_critic 0) >= 2x pythae samples/s at an ELBO >= pythae's - {ELBO_TOLERANCE} nats"}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
