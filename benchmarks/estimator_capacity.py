"""Capacity probe: can the critic network represent log p_D at all?

Regresses the mlp critic's network (3 x 128 leaky ReLU by default, optionally with random
Fourier features of x in front) directly on the exact log p_D(x) at fresh data points (MSE,
Adam, batch 256; no game, no generator) and prints the held-out MAE and Spearman correlation.
What this reaches bounds what the density estimator can reach inside f-GM at that budget.

    python benchmarks/estimator_capacity.py --set ring8 --steps 2000
    python benchmarks/estimator_capacity.py --set ring8 --steps 2000 --fourier 64 --scale 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from fgm_report.metrics import estimator_fidelity, mixture_log_density


def mixture(name: str) -> tuple[torch.Tensor, float]:
    if name == "ring8":
        a = 2 * np.pi * np.arange(8) / 8
        return torch.tensor(np.stack([np.cos(a), np.sin(a)], 1), dtype=torch.float64), 0.01
    if name == "grid25":
        v = np.arange(-4.0, 5.0, 2.0)
        return torch.tensor(np.stack(np.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2), dtype=torch.float64), 0.05
    return torch.tensor([[1.0, 0.0]], dtype=torch.float64), 0.5  # gauss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="ring8", choices=("ring8", "grid25", "gauss"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--fourier", type=int, default=0, help="random Fourier frequencies in front (0: raw x)")
    ap.add_argument("--scale", type=float, default=30.0, help="std of the Fourier frequencies")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    means, sd = mixture(args.set)
    stds = torch.full_like(means, sd)

    def draw(n: int) -> torch.Tensor:
        k = torch.randint(0, len(means), (n,))
        return means[k] + sd * torch.randn(n, 2, dtype=torch.float64)

    from fgm_architectures.mlp import FourierFeatures

    act = nn.LeakyReLU(0.2)
    first: list[nn.Module] = [nn.Linear(2, args.width)]
    if args.fourier:
        ff = FourierFeatures(2, args.fourier, args.scale)
        first = [ff, nn.Linear(ff.out_features, args.width)]
    net = nn.Sequential(*first, act, nn.Linear(args.width, args.width), act, nn.Linear(args.width, args.width), act,
                        nn.Linear(args.width, 1))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999))
    test = draw(2000)
    truth = mixture_log_density(test, means, stds)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = draw(256)
        loss = (net(x.float()).squeeze(1) - mixture_log_density(x, means, stds).float()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            with torch.no_grad():
                fid = estimator_fidelity(net(test.float()).squeeze(1), truth)
            print(f"{args.set} step {step}: MAE {fid['estimator_mae']:.3f} nats, Spearman {fid['estimator_spearman']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
