"""``critic.rescale``: where every sample's weight in the gradient of J under- or overflows (a
saturated divergence far from the data), the density critic steps along J's exact gradient,
rescaled so that the largest weight is 1 (docs/math.md, "Saturation and rescaled steps").

References here are written out: f for each divergence (for log T'), and J of a 1-D
linear-Gaussian model in float64 with its log ratio s shifted by a constant, whose gradient
float64 holds where the float32 objective's gradient is exactly zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from test_math import F_OF_U, A, B, C, S, V, W, LinearDecoder, LinearEncoder, alpha_f, quantile_noise

from fgm_core.components import Networks
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet

assert (A, C, V, W, B, S) == (0.5, 0.1, 0.6, 0.6, 0.1, 0.8)  # the 1-D linear-Gaussian model written out below


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=["divergences"], strict=True)


ALPHAS = (2.0, 0.5, 0.25, -0.5)


@pytest.mark.parametrize("name,params", [(n, {}) for n in F_OF_U if n != "total_variation"]
                         + [("alpha", {"alpha": a}) for a in ALPHAS])
def test_log_T_prime_is_the_log_slope_of_f_prime(plugins, name, params):
    """log T'(s) = s + log f''(e^s), f'' by central differences of f written out in test_math."""
    div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
    f = alpha_f(params["alpha"]) if params else F_OF_U[name]
    s = np.linspace(-6, 6, 49)
    u, h = np.exp(s), 1e-3 * np.exp(s)
    f2 = (f(u + h) - 2 * f(u) + f(u - h)) / h**2
    np.testing.assert_allclose(div.log_T_prime(torch.from_numpy(s)).numpy(), s + np.log(f2), rtol=0, atol=1e-4)


def test_divergences_without_a_closed_form_are_never_rescaled(plugins):
    assert plugins.get("divergences", "total_variation").factory(max_exp=40.0).log_T_prime(torch.zeros(3)) is None
    custom = plugins.get("divergences", "custom").factory(max_exp=40.0, formula="(u-1)**2/(u+1)")
    assert custom.log_T_prime(torch.zeros(3)) is None


# --------------------------------------------------------------------------- the exact model, shifted
class ShiftedLogDensity(nn.Module):
    """l(x) = log N(x; 0, 1) + offset: the exact log p_D moved ``offset`` nats away, which moves
    s by the same amount on both sides (a density estimator far from the data's scale)."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(offset))

    def forward(self, x, z=None):
        return -0.5 * math.log(2 * math.pi) - 0.5 * x.squeeze(-1) ** 2 + self.offset


def shifted_model(div, offset: float, rescale: bool = True) -> FGMModel:
    nets = Networks(LinearEncoder(A, C, V), LinearDecoder(W, B), ShiftedLogDensity(offset))
    return FGMModel(nets, div, critic_form="density", data_shape=(1,), latent_dim=1, sigma=S, learn_sigma=True,
                    min_sigma=1e-4, generator_loss="saddle", rescale=rescale)


def grid_noise(n: int = 20) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    first, second = quantile_noise(n)
    return first, {"z": first, "x_eps": second, "z_eps": second}


def lg(v, m, var):
    return -0.5 * torch.log(2 * math.pi * var) - 0.5 * (v - m) ** 2 / var


# (T'(s), C'(s)) in float64 without clamps, and (T, C) for the value of J
WEIGHTS = {
    "alpha": (lambda s: torch.exp(s), lambda s: torch.exp(2 * s)),  # alpha = 2: T = e^s - 1, C = (e^2s - 1)/2
    "hellinger": (lambda s: 0.5 * torch.exp(-s / 2), lambda s: 0.5 * torch.exp(s / 2)),
}
CASES = [  # divergence, params, offset: where float32 under- or overflows
    ("alpha", {"alpha": 2.0}, -150.0),  # e^s = e^-150: below float32's smallest number
    ("alpha", {"alpha": 2.0}, 60.0),  # e^s = e^60 > e^max_exp: clamped
    ("hellinger", {}, 240.0),  # data side e^-120 underflows, model side e^120 clamps
    ("hellinger", {}, 0.0),  # near the data, both sides weigh in: rescaled only with the bound lowered to 0
]


def written_out_gradient(model: FGMModel, name: str, offset: float, x, noise) -> tuple[dict, float]:
    """The gradient of J (float64, written out here) for every parameter, and the log of its
    largest per-sample weight (the rescaled step divides by its exponential)."""
    p = {n: t.detach().double().requires_grad_(True) for n, t in model.named_parameters()}
    sigma = 1e-4 + torch.exp(p["rho"])
    x, z_eps, zp, x_eps = (t.double() for t in (x, noise["z_eps"], noise["z"], noise["x_eps"]))
    a, c, log_v, w, b = p["encoder.a"], p["encoder.c"], p["encoder.log_v"], p["decoder.w"], p["decoder.b"]

    def s_of(x, z):
        l_x = lg(x, torch.tensor(0.0), torch.tensor(1.0)) + p["critic.offset"]
        return (l_x + lg(z, a * x + c, log_v.exp()) - lg(z, torch.tensor(0.0), torch.tensor(1.0))
                - lg(x, w * z + b, sigma**2)).squeeze(1)

    s_q = s_of(x, a * x + c + torch.exp(0.5 * log_v) * z_eps)
    s_p = s_of(w * zp + b + sigma * x_eps, zp)
    t_prime, c_prime = WEIGHTS[name]
    # J's gradient is the weighted sum of grad s; its value needs no exponentials of huge s
    surrogate = (t_prime(s_q.detach()) * s_q).mean() - (c_prime(s_p.detach()) * s_p).mean()
    grads = dict(zip(p, torch.autograd.grad(surrogate, list(p.values()), allow_unused=True)))
    m = max(float(torch.log(t_prime(s_q.detach()) / len(s_q)).max()),
            float(torch.log(c_prime(s_p.detach()) / len(s_p)).max()))
    return grads, m


@pytest.mark.parametrize("name,params,offset", CASES)
def test_a_saturated_step_follows_the_exact_gradient_rescaled(plugins, monkeypatch, name, params, offset):
    div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
    x, noise = grid_noise()
    model = shifted_model(div, offset)
    want, m = written_out_gradient(model, name, offset, x, noise)
    if offset == 0.0:
        monkeypatch.setattr("fgm_core.model.RESCALE_LOG_BOUND", 0.0)
    else:
        assert abs(m) > 20  # the regime the rescaling is for
    scale = math.exp(-m)

    # encoder and generator step: the gradient of J (they minimise it) times e^-m
    gen = [(n, p) for n, p in model.named_parameters() if not n.startswith("critic.")]
    got = torch.autograd.grad(model.generator_loss(x, noise).loss, [p for _, p in gen])
    assert model.pop_rescaled() == 1
    for (n, _), g in zip(gen, got):
        torch.testing.assert_close(g.double(), want[n] * scale, rtol=2e-2, atol=1e-6, msg=n)
    assert max(float(g.abs().max()) for g in got) > 1e-3
    # density-estimator step: it maximises J, so its loss's gradient is minus J's, times e^-m
    (got_c,) = torch.autograd.grad(model.critic_loss(x, noise).loss, [model.critic.offset])
    torch.testing.assert_close(got_c.double(), -want["critic.offset"] * scale, rtol=2e-2, atol=1e-6)

    if offset == 0.0:
        return
    # without the rescaling, float32 gives exactly nothing here: the step would not move
    raw = shifted_model(div, offset, rescale=False)
    got_raw = torch.autograd.grad(raw.generator_loss(x, noise).loss, [p for n, p in raw.named_parameters()
                                                                     if not n.startswith("critic.")])
    assert all(float(g.abs().max()) == 0.0 for g in got_raw) or not all(
        torch.isfinite(g).all() for g in got_raw)
    assert raw.pop_rescaled() == 0


@pytest.mark.parametrize("name", ["kl", "js", "hellinger", "reverse_kl"])
def test_near_the_data_nothing_is_rescaled(plugins, name):
    """With l = log p_D exactly, s is O(1) and the step is the plain one, bit for bit."""
    div = plugins.get("divergences", name).factory(max_exp=40.0)
    x, noise = grid_noise()
    on, off = shifted_model(div, 0.0), shifted_model(div, 0.0, rescale=False)
    for a, b in ((on.generator_loss(x, noise).loss, off.generator_loss(x, noise).loss),
                 (on.critic_loss(x, noise).loss, off.critic_loss(x, noise).loss)):
        assert torch.equal(a, b)
    assert on.pop_rescaled() == 0
