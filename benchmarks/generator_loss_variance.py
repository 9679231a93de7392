"""Generator-gradient noise of the saddle and non-saturating losses, per divergence.

The settings are exact (1-D x and z): data N(0, 1), a linear-Gaussian encoder
q(z|x) = N(a x + c, v) and generator p(x|z) = N(w z + b, s^2), prior N(0, 1), and a density
critic fixed at the exact log p_D(x). Two settings, both with every divergence finite:

- ``shifted``: the two joints have the same covariance, means 1.1 standard deviations apart;
- ``wide``: the model's joint is wider than the data's in every direction (it puts mass where
  the data is thin, as a generator between the modes of a mixture does), and shifted by 0.3. For each built-in
divergence with the density critic and each ``critic.generator_loss``, it prints:

- ``true``: the norm of the expected generator gradient (encoder, generator and noise-scale
  parameters), from a 1000 x 1000 grid of normal quantiles (a deterministic expectation);
- ``median`` and ``p99``: the median and 99th percentile, over ``--batches`` batches of
  ``--batch`` rows, of the norm of (batch gradient - true gradient), i.e. the noise;
- ``max``: the largest of them, and ``p99/true``: the noise relative to the signal.

A heavy-tailed loss shows as p99 and max far above the median. Run:
``OMP_NUM_THREADS=1 python benchmarks/generator_loss_variance.py`` (about 1 min of CPU).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from fgm_core.components import Networks
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet

#: (a, c, v, w, b, s) per setting
SETTINGS = {"shifted": (0.6, -0.3, 0.64, 0.6, 0.8, 0.8), "wide": (0.5, 0.0, 0.4, 0.5, 0.3, 1.0)}
CASES = [("kl", {}), ("reverse_kl", {}), ("pearson", {}), ("neyman", {}), ("hellinger", {}), ("js", {}),
         ("gan", {}), ("jeffrey", {}), ("alpha", {"alpha": 0.5}), ("alpha", {"alpha": 2.0}),
         ("alpha", {"alpha": -1.0})]


class Encoder(nn.Module):
    def __init__(self, a: float, c: float, v: float) -> None:
        super().__init__()
        self.a, self.c, self.log_v = (nn.Parameter(torch.tensor(t)) for t in (a, c, math.log(v)))

    def forward(self, x):
        mu = self.a * x + self.c
        return mu, self.log_v.expand_as(mu)


class Decoder(nn.Module):
    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))

    def forward(self, z):
        return self.w * z + self.b


class ExactLogDensity(nn.Module):
    def forward(self, x, z=None):
        return -0.5 * math.log(2 * math.pi) - 0.5 * x.squeeze(-1) ** 2


def gradient(model: FGMModel, x: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
    params = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
    grads = torch.autograd.grad(model.generator_loss(x, noise).loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def measure(div, loss: str, setting: str, batches: int, batch: int, seed: int) -> dict[str, float]:
    a_, c_, v_, w_, b_, s_ = SETTINGS[setting]
    model = FGMModel(Networks(Encoder(a_, c_, v_), Decoder(w_, b_), ExactLogDensity()), div, critic_form="density",
                     data_shape=(1,), latent_dim=1, sigma=s_, min_sigma=1e-4, generator_loss=loss)
    n = 1000
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
    a, b = (t.reshape(-1, 1) for t in torch.meshgrid(q, q, indexing="ij"))
    true = gradient(model, a, {"z": a, "x_eps": b, "z_eps": b})
    g = torch.Generator().manual_seed(seed)
    noise_norms = []
    for _ in range(batches):
        x = torch.randn(batch, 1, generator=g)
        nz = {k: torch.randn(batch, 1, generator=g) for k in ("z", "x_eps", "z_eps")}
        noise_norms.append(float((gradient(model, x, nz) - true).norm()))
    t = torch.tensor(noise_norms)
    tn = float(true.norm())
    return {"true": tn, "median": float(t.median()), "p99": float(t.quantile(0.99)), "max": float(t.max()),
            "p99_over_true": float(t.quantile(0.99)) / max(tn, 1e-12)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    plugins = PluginSet(only=["divergences"], strict=True)
    rows = []
    for setting in SETTINGS:
        print(f"setting {setting}: (a, c, v, w, b, s) = {SETTINGS[setting]}, {args.batches} batches of {args.batch}")
        print(f"{'divergence':>12} {'loss':>15} {'true':>9} {'median':>9} {'p99':>10} {'max':>10} {'p99/true':>9}")
        for name, params in CASES:
            label = name + (f"={params['alpha']:g}" if params else "")
            for loss in ("saddle", "non_saturating"):
                div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
                r = measure(div, loss, setting, args.batches, args.batch, args.seed)
                rows.append({"setting": setting, "divergence": label, "loss": loss, **r})
                print(f"{label:>12} {loss:>15} {r['true']:9.3f} {r['median']:9.3f} {r['p99']:10.3f} "
                      f"{r['max']:10.3f} {r['p99_over_true']:9.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
