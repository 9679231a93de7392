"""Training benchmarks: framework overhead, fraction of the CPU's GEMM roof, peak memory.

    python benchmarks/train_bench.py                       # full run (a few minutes on 2 cores)
    python benchmarks/train_bench.py --quick               # smoke run (seconds)
    python benchmarks/train_bench.py --threads 2 --json train_bench.json

1. Overhead: ``Trainer.train_step()`` (density critic, js, n_critic = 1, Adam) against a
   hand-written PyTorch loop doing the same f-GM update inline (the density-critic log ratio
   s = l(x) + log q(z|x) - log p(z) - log p(x|z), T = log 2 - softplus(-s), f*(T) =
   softplus(s) - log 2, critic step then non-saturating generator step), on the *same
   networks* (a second ``make_model`` with identical weights). Before timing, the hand losses
   are checked against ``model.critic_loss`` / ``generator_loss`` on the same batch and noise.
   Timed interleaved (fgm, hand, fgm, hand, ...) after a warm-up; the median repeat is reported.
2. Roof: the same fgm training step on 784-D vectors (the ``array`` dataset, a temporary .npy)
   with 3 x 512 MLPs at batch 1024; FLOPs per step are counted from the ``nn.Linear`` calls
   actually executed in one step (forward hooks: 2 d_in d_out per row forward, plus the same
   again for the weight gradient when the weights get one, and again for the input gradient
   when the input needs one), against a float32 ``torch.mm`` roof timed in the same run.
3. Peak memory (peak RSS, VmHWM, of a fresh subprocess): import only,
   default ring8 training (200 steps via ``fgm.train``), mlp 512 training, sampling 100k
   from the trained ring8 run.

The machine may be shared: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
LOG2 = math.log(2.0)
LOG_2PI = math.log(2 * math.pi)


def _base_cfg(dataset: dict, hidden: int, batch: int, seed: int = 0, threads: int | None = None) -> dict:
    return {"data": dataset, "model": {"architecture": "mlp", "latent_dim": 2, "options": {"hidden": hidden, "depth": 3}},
            "divergence": {"name": "js"}, "critic": {"form": "density", "n_critic": 1},
            "optim": {"batch_size": batch},
            "run": {"device": "cpu", "seed": seed, "progress": False, "tensorboard": False, "threads": threads}}


# --------------------------------------------------------------------------- the hand loop
class HandLoop:
    """A minimal hand-written f-GM (density critic, js) training loop on given networks."""

    def __init__(self, model, data, batch: int, seed: int, lr: float, betas, sigma_lr_scale: float) -> None:
        import torch

        self.torch = torch
        self.enc, self.dec, self.critic = model.encoder, model.decoder, model.critic
        self.rho, self.min_sigma = model.rho, model.min_sigma
        self.d = model.latent_dim
        self.data = data
        self.batch = batch
        gen_params = list(self.enc.parameters()) + list(self.dec.parameters())
        self.opt_g = torch.optim.Adam([{"params": gen_params}, {"params": [self.rho], "lr": lr * sigma_lr_scale}],
                                      lr=lr, betas=betas, fused=True)  # the trainer's Adam too
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=lr, betas=betas, fused=True)
        self.g = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(data.shape[0], generator=self.g)
        self.pos = 0

    def batch_and_noise(self):
        t = self.torch
        if self.pos + self.batch > self.data.shape[0]:
            self.perm, self.pos = t.randperm(self.data.shape[0], generator=self.g), 0
        x = self.data[self.perm[self.pos:self.pos + self.batch]]
        self.pos += self.batch
        b = x.shape[0]
        return x, t.randn(b, self.d, generator=self.g), t.randn(b, self.d, generator=self.g), \
            t.randn(x.shape, generator=self.g)

    def losses(self, x, z, z_eps, x_eps, critic_step: bool):
        """(critic loss, generator loss) of one batch; the hand-written f-GM objective."""
        t = self.torch
        F = t.nn.functional

        def gauss(v, mean, log_std):
            r = (v - mean) * t.exp(-log_std)
            return (-0.5 * (LOG_2PI + r * r) - log_std).flatten(1).sum(1)

        def std_normal(v):
            return (-0.5 * (LOG_2PI + v * v)).sum(1)

        ctx = t.no_grad() if critic_step else t.enable_grad()
        with ctx:
            log_sigma = t.log(self.min_sigma + t.exp(self.rho))
            mean_p = self.dec(z)
            x_p = mean_p + t.exp(log_sigma) * x_eps
            mu, logvar = self.enc(x)
            logvar = logvar.clamp(-30.0, 20.0)
            z_q = mu + t.exp(0.5 * logvar) * z_eps
            log_q = gauss(z_q, mu, 0.5 * logvar)
        v = self.critic(t.cat([x, x_p]))
        v_q, v_p = v[: x.shape[0]], v[x.shape[0]:]
        with ctx:
            s_q_extra = log_q - std_normal(z_q) - gauss(x, self.dec(z_q), log_sigma)
            mu_p, logvar_p = self.enc(x_p)
            logvar_p = logvar_p.clamp(-30.0, 20.0)
            s_p_extra = gauss(z, mu_p, 0.5 * logvar_p) - std_normal(z) - gauss(x_p, mean_p, log_sigma)
        s_q, s_p = v_q + s_q_extra, v_p + s_p_extra
        t_q = LOG2 - F.softplus(-s_q)
        if critic_step:
            return -(t_q.mean() - (F.softplus(s_p) - LOG2).mean())
        return t_q.mean() - (LOG2 - F.softplus(-s_p)).mean()  # non-saturating generator loss

    def step(self):
        x, z, ze, xe = self.batch_and_noise()
        lc = self.losses(x, z, ze, xe, critic_step=True)
        self.opt_c.zero_grad(set_to_none=True)
        lc.backward()
        self.opt_c.step()
        x, z, ze, xe = self.batch_and_noise()
        self.critic.requires_grad_(False)
        lg = self.losses(x, z, ze, xe, critic_step=False)
        self.critic.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        lg.backward()
        self.opt_g.step()
        return lc, lg


def _make_pair(cfg_dict: dict):
    """A fgm Trainer and a HandLoop on a second make_model copy with identical weights."""
    import torch

    from fgm_core.api import resolve_config
    from fgm_core.build import make_model
    from fgm_core.trainer import Trainer

    cfg, plugins = resolve_config(cfg_dict)
    trainer = Trainer(cfg, plugins, run_dir=Path(tempfile.mkdtemp(prefix="fgm-bench-unused-")))
    twin = make_model(cfg, plugins, trainer.info)
    twin.load_state_dict(trainer.model.state_dict())
    for a, b in zip(trainer.model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    o = cfg.optim
    hand = HandLoop(twin, trainer.train_x.clone(), trainer.train_rows(), cfg.run.seed + 1, o.lr, o.betas,
                    o.sigma_lr_scale)
    # parity: the hand-written losses equal the framework's on the same batch and noise
    x, z, ze, xe = hand.batch_and_noise()
    noise = {"z": z, "z_eps": ze, "x_eps": xe}
    with torch.no_grad():
        ref_c = float(trainer.model.critic_loss(x, noise).loss)
        ref_g = float(trainer.model.generator_loss(x, noise).loss)
        got_c = float(hand.losses(x, z, ze, xe, True))
        got_g = float(hand.losses(x, z, ze, xe, False))
    trainer.model.divergence.pop_clamped()
    parity = max(abs(ref_c - got_c), abs(ref_g - got_g))
    if parity > 1e-4 * (1 + abs(ref_c) + abs(ref_g)):
        raise SystemExit(f"hand loop does not match fgm: critic {got_c} vs {ref_c}, generator {got_g} vs {ref_g}")
    return trainer, hand, parity


def _time_steps(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def bench_overhead(name: str, cfg_dict: dict, warmup: int, steps: int, repeats: int) -> dict:
    trainer, hand, parity = _make_pair(cfg_dict)
    _time_steps(trainer.train_step, warmup)
    _time_steps(hand.step, warmup)
    fgm_t, hand_t = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both
        fgm_t.append(_time_steps(trainer.train_step, steps))
        hand_t.append(_time_steps(hand.step, steps))
    fgm_s, hand_s = 1 / statistics.median(fgm_t), 1 / statistics.median(hand_t)
    trainer.model.divergence.pop_clamped()
    return {"config": name, "batch": trainer.train_rows(), "hidden": cfg_dict["model"]["options"]["hidden"],
            "data_dim": trainer.info.dims, "fgm_steps_per_s": fgm_s, "hand_steps_per_s": hand_s,
            "ratio": fgm_s / hand_s, "ratio_paired_median": statistics.median(h / f for f, h in zip(fgm_t, hand_t)),
            "fgm_repeats_s": fgm_t, "hand_repeats_s": hand_t,
            "steps_per_repeat": steps, "loss_parity_abs": parity}


# --------------------------------------------------------------------------- FLOPs and roof
def count_step_flops(trainer) -> dict:
    """FLOPs of one train_step, from the nn.Linear calls it executes (forward hooks)."""
    import torch

    calls = []

    def hook(mod, inp, out):
        x = inp[0]
        rows = x.numel() // x.shape[-1]
        fwd = 2 * rows * mod.in_features * mod.out_features
        grad = torch.is_grad_enabled()
        wgrad = fwd if grad and mod.weight.requires_grad else 0
        igrad = fwd if grad and x.requires_grad else 0
        calls.append((fwd, wgrad, igrad))

    hs = [m.register_forward_hook(hook) for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        trainer.train_step()
    finally:
        for h in hs:
            h.remove()
    fwd = sum(c[0] for c in calls)
    wg = sum(c[1] for c in calls)
    ig = sum(c[2] for c in calls)
    return {"linear_calls": len(calls), "forward_flop": fwd, "weight_grad_flop": wg, "input_grad_flop": ig,
            "total_flop": fwd + wg + ig}


def gemm_roof(shapes, seconds: float) -> list[dict]:
    import torch

    out = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            torch.mm(a, b)
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < 5:
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        out.append({"m": m, "k": k, "n": n, "calls": len(times),
                    "gflop_per_s": 2 * m * k * n / statistics.median(times) / 1e9})
    return out


def bench_roof(work: Path, batch: int, hidden: int, warmup: int, steps: int, repeats: int, roof_s: float) -> dict:
    import numpy as np

    from fgm_core.api import resolve_config
    from fgm_core.trainer import Trainer

    path = work / "vectors784.npy"
    rows = max(4 * batch, 4096)
    np.save(path, np.random.default_rng(0).standard_normal((rows, 784), dtype=np.float32))
    cfg_dict = _base_cfg({"dataset": "array", "options": {"path": str(path), "kind": "vector"}}, hidden, batch)
    cfg, plugins = resolve_config(cfg_dict)
    trainer = Trainer(cfg, plugins, run_dir=work / "unused-roof")
    roof_before = gemm_roof([(1024, 1024, 1024)], roof_s)
    _time_steps(trainer.train_step, warmup)
    flops = count_step_flops(trainer)
    times = [_time_steps(trainer.train_step, steps) for _ in range(repeats)]
    roof_after = gemm_roof([(1024, 1024, 1024), (2 * batch, 512, 512), (batch, 784, 512)], roof_s)
    step_s = statistics.median(times)
    achieved = flops["total_flop"] / step_s / 1e9
    roof = max(g["gflop_per_s"] for g in roof_before + roof_after)  # the best GEMM seen: conservative
    trainer.model.divergence.pop_clamped()
    return {"config": f"784-D vectors, mlp {hidden} x 3, batch {batch}, js, density critic",
            "batch": batch, "hidden": hidden, "data_dim": 784, **flops, "step_s": step_s, "repeats_s": times,
            "steps_per_s": 1 / step_s, "achieved_gflop_per_s": achieved, "roof_gflop_per_s": roof,
            "roof_runs": roof_before + roof_after, "fraction_of_roof": achieved / roof}


# --------------------------------------------------------------------------- memory (subprocesses)
def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own address space; getrusage's
    ru_maxrss is not used because Linux carries the forking parent's RSS over the exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (not Linux: bytes)


def mem_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import fgm_core as fgm

    spec = json.loads(args.mem_spec)
    info: dict = {"kind": spec["kind"]}
    t = time.perf_counter()
    if spec["kind"] == "train":
        run = fgm.train(spec["cfg"], progress=False)
        info["run"] = str(run.path)
    elif spec["kind"] == "sample":
        run = fgm.load_run(spec["run"])
        x = run.sample(spec["n"])
        info["shape"] = list(x.shape)
    info["seconds"] = time.perf_counter() - t
    info["maxrss_mb"] = _peak_rss_mb()
    print(json.dumps(info))


def _mem(spec: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "FGM_NO_PROGRESS": "1"}
    cmd = [sys.executable, str(HERE), "--mem-worker", "--mem-spec", json.dumps(spec), "--threads", str(threads)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"memory worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(work: Path, threads: int, quick: bool) -> list[dict]:
    steps = 20 if quick else 200
    n_sample = 10_000 if quick else 100_000
    runs = str(work / "mem-runs")

    def train_cfg(hidden: int, batch: int) -> dict:
        c = _base_cfg({"dataset": "ring8"}, hidden, batch)
        c["run"].update(steps=steps, out_dir=runs, checkpoint_every=steps, eval_samples=2500)
        return c

    rows = []
    r = _mem({"kind": "import"}, threads)
    rows.append({"what": "import fgm + torch only", **r})
    r = _mem({"kind": "train", "cfg": train_cfg(128, 256)}, threads)
    rows.append({"what": f"train ring8, mlp 128 x 3, batch 256, {steps} steps", **r})
    r2 = _mem({"kind": "train", "cfg": train_cfg(512, 1024)}, threads)
    rows.append({"what": f"train ring8, mlp 512 x 3, batch 1024, {steps} steps", **r2})
    r3 = _mem({"kind": "sample", "run": r["run"], "n": n_sample}, threads)
    rows.append({"what": f"sample {n_sample:,} from the ring8 mlp 128 run", **r3})
    # an image configuration: the dcgan preset's networks on 28x28 shapes
    img_steps = 5 if quick else 50
    img = {"data": {"dataset": "shapes", "options": {"n_train": 4096, "n_test": 512}},
           "model": {"architecture": "dcgan", "latent_dim": 32, "sigma": 0.1}, "divergence": {"name": "kl"},
           "optim": {"batch_size": 64},
           "run": {"device": "cpu", "steps": img_steps, "out_dir": runs, "checkpoint_every": img_steps,
                   "eval_samples": 500, "progress": False, "tensorboard": False}}
    r4 = _mem({"kind": "train", "cfg": img}, threads)
    rows.append({"what": f"train shapes, dcgan 28x28, batch 64, {img_steps} steps", **r4})
    n_img = 1_000 if quick else 10_000
    r5 = _mem({"kind": "sample", "run": r4["run"], "n": n_img}, threads)
    rows.append({"what": f"sample {n_img:,} images from the dcgan run", **r5})
    return rows


# --------------------------------------------------------------------------- driver
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few steps, small sample)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", type=Path, default=Path("train_bench.json"), help="results file")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: overhead,roof,memory")
    p.add_argument("--mem-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mem-spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mem_worker:
        return mem_worker(args)

    import torch

    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    q = args.quick
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fgm-train-bench-"))
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "loadavg_before": load_before}
    print(f"{machine['platform']}, torch {machine['torch']}, {machine['threads']} threads, "
          f"{machine['cpu_count']} cores, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
          f"{' (quick mode)' if q else ''}", flush=True)

    result: dict = {"machine": machine, "quick": q}
    if "overhead" not in skip:
        configs = [("ring8, mlp 128 x 3, batch 256", _base_cfg({"dataset": "ring8"}, 128, 256),
                    (5, 20, 3) if q else (30, 100, 9)),
                   ("ring8, mlp 512 x 3, batch 1024", _base_cfg({"dataset": "ring8"}, 512, 1024),
                    (2, 3, 3) if q else (5, 15, 5))]
        rows = []
        for name, cfg, (warm, steps, reps) in configs:
            rows.append(bench_overhead(name, cfg, warm, steps, reps))
            r = rows[-1]
            print(f"  overhead {name}: fgm {r['fgm_steps_per_s']:.1f}/s, hand {r['hand_steps_per_s']:.1f}/s", flush=True)
        result["overhead"] = rows
    if "roof" not in skip:
        warm, steps, reps, roof_s = (1, 2, 2, 0.5) if q else (2, 5, 3, 2.0)
        result["roof"] = bench_roof(work, 1024, 512, warm, steps, reps, roof_s)
        print(f"  roof: {result['roof']['achieved_gflop_per_s']:.1f} of {result['roof']['roof_gflop_per_s']:.1f} GFLOP/s",
              flush=True)
    if "memory" not in skip:
        result["memory"] = bench_memory(work, args.threads, q)
    load_after = os.getloadavg()
    machine["loadavg_after"] = load_after
    result["seconds"] = time.perf_counter() - t_all

    # ------------------------------------------------------------------ tables
    print()
    print(f"train_bench: {machine['processor']}, {machine['cpu_count']} cores, torch {machine['torch']}, "
          f"{machine['threads']} threads, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
          f"{', quick mode' if q else ''}")
    if "overhead" in result:
        print("\n1. Trainer overhead: fgm Trainer.train_step vs a hand-written loop (js, density critic, "
              "n_critic 1, Adam, same weights)")
        print(f"| {'config':<32} | {'fgm steps/s':>11} | {'hand steps/s':>12} | {'fgm/hand':>8} | {'paired':>6} | target >= 0.95 |")
        print(f"|{'-' * 34}|{'-' * 13}|{'-' * 14}|{'-' * 10}|{'-' * 8}|{'-' * 16}|")
        for r in result["overhead"]:
            ok = "met" if r["ratio_paired_median"] >= 0.95 else "missed"  # paired: robust to machine drift
            print(f"| {r['config']:<32} | {r['fgm_steps_per_s']:>11.1f} | {r['hand_steps_per_s']:>12.1f} | "
                  f"{r['ratio']:>8.3f} | {r['ratio_paired_median']:>6.3f} | {ok:<14} |")
        print("fgm/hand: ratio of the median steps/s; paired: median over repeats of the ratio of adjacent "
              "fgm and hand repeats (the target is judged on it: it cancels the machine's drift during the run)")
    if "roof" in result:
        r = result["roof"]
        print(f"\n2. Fraction of the float32 GEMM roof: {r['config']}")
        print(f"| {'FLOP/step (fwd + wgrad + igrad)':<34} | {'step s':>7} | {'achieved GFLOP/s':>16} | "
              f"{'roof GFLOP/s':>12} | {'fraction':>8} | target >= 0.6 |")
        print(f"|{'-' * 36}|{'-' * 9}|{'-' * 18}|{'-' * 14}|{'-' * 10}|{'-' * 15}|")
        flop = (f"{r['total_flop'] / 1e9:.1f} G ({r['forward_flop'] / 1e9:.1f} + {r['weight_grad_flop'] / 1e9:.1f}"
                f" + {r['input_grad_flop'] / 1e9:.1f})")
        ok = "met" if r["fraction_of_roof"] >= 0.6 else "missed"
        print(f"| {flop:<34} | {r['step_s']:>7.3f} | {r['achieved_gflop_per_s']:>16.1f} | "
              f"{r['roof_gflop_per_s']:>12.1f} | {r['fraction_of_roof']:>8.2f} | {ok:<13} |")
        print("GEMM runs: " + ", ".join(f"{g['m']}x{g['k']}x{g['n']} {g['gflop_per_s']:.1f}" for g in r["roof_runs"])
              + " GFLOP/s")
    if "memory" in result:
        print("\n6. Peak memory (max RSS of a fresh process)")
        print(f"| {'what':<50} | {'max RSS MB':>10} | {'seconds':>7} |")
        print(f"|{'-' * 52}|{'-' * 12}|{'-' * 9}|")
        for r in result["memory"]:
            print(f"| {r['what']:<50} | {r['maxrss_mb']:>10.0f} | {r['seconds']:>7.1f} |")
    print(f"\ntotal {result['seconds']:.0f} s")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
