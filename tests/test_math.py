"""The f-GM math against independent references (docs/math.md sections 2-4).

Every reference here is written out in this file: Gaussian densities with their normaliser,
each f(u) of the table, 2-D grid quadrature, the analytic marginal of a linear-Gaussian model,
a brute-force integral over z. Nothing is computed with fgm's own helpers, so a wrong
normaliser, a missing log q(z|x) or a sign error in T or C makes these tests fail.

The setting where everything is exact: x and z are 1-D, p_D(x) = N(0, 1), the encoder is
q(z|x) = N(A x + C, V), the generator p(x|z) = N(W z + B, S^2), the prior N(0, 1), and the
density critic returns the exact log p_D(x). Then Q(x, z) and P(x, z) are 2-D Gaussians and
J (evaluated on an equal-weight quantile grid, a deterministic Monte Carlo) must equal
D_f(Q || P) integrated numerically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fgm_core.build import DataInfo
from fgm_core.components import Networks, Scaling
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet
from fgm_core.run import Run

A, C, V = 0.5, 0.1, 0.6  # encoder q(z|x) = N(A x + C, V)
W, B, S = 0.6, 0.1, 0.8  # generator p(x|z) = N(W z + B, S^2)


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=["divergences"], strict=True)


# --------------------------------------------------------------------------- references
def log_normal(x, mean, var):
    """log N(x; mean, var), numpy, 1-D, normaliser included."""
    return -0.5 * np.log(2 * np.pi * var) - 0.5 * (x - mean) ** 2 / var


def alpha_f(a: float):
    return lambda u: (u ** a - 1 - a * (u - 1)) / (a * (a - 1))


#: f(u) of every built-in, written out (docs/math.md section 2.1).
F_OF_U = {
    "kl": lambda u: u * np.log(u),
    "reverse_kl": lambda u: -np.log(u),
    "pearson": lambda u: (u - 1) ** 2,
    "neyman": lambda u: (1 - u) ** 2 / u,
    "hellinger": lambda u: (np.sqrt(u) - 1) ** 2,
    "js": lambda u: u * np.log(u) - (u + 1) * np.log((u + 1) / 2),
    "gan": lambda u: u * np.log(u) - (u + 1) * np.log(u + 1),
    "jeffrey": lambda u: (u - 1) * np.log(u),
    "total_variation": lambda u: np.abs(u - 1) / 2,
}
CASES = [(n, {}) for n in F_OF_U] + [("alpha", {"alpha": a}) for a in (0.5, 2.0, -1.0)]
IDS = [n + (f"={p['alpha']:g}" if p else "") for n, p in CASES]


def integrated_divergence(f) -> float:
    """D_f(Q || P) = integral of P f(Q/P) over (x, z), trapezoid rule on a 1401^2 grid."""
    g = np.linspace(-14, 14, 1401)
    x, z = np.meshgrid(g, g, indexing="ij")
    log_q = log_normal(x, 0.0, 1.0) + log_normal(z, A * x + C, V)
    log_p = log_normal(z, 0.0, 1.0) + log_normal(x, W * z + B, S * S)
    with np.errstate(over="ignore", under="ignore"):
        integrand = np.exp(log_p) * f(np.exp(log_q - log_p))
    return float(np.trapezoid(np.trapezoid(integrand, g, axis=1), g))


# --------------------------------------------------------------------------- exact networks
class LinearEncoder(nn.Module):
    """q(z|x) = N(a x + c, v) (1-D), or any diagonal Gaussian with per-row mean and variance."""

    def __init__(self, a: float, c: float, v: float) -> None:
        super().__init__()
        self.a, self.c = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(c))
        self.log_v = nn.Parameter(torch.tensor(math.log(v)))

    def forward(self, x):
        mu = self.a * x + self.c
        return mu, self.log_v.expand_as(mu)


class LinearDecoder(nn.Module):
    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(w)), nn.Parameter(torch.tensor(b))

    def forward(self, z):
        return self.w * z + self.b


class ExactLogDensity(nn.Module):
    """The density critic set to the exact log p_D(x) of N(0, 1), plus a learnable offset
    (zero here) so the critic has a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, z=None):
        return (-0.5 * math.log(2 * math.pi) - 0.5 * x.squeeze(-1) ** 2) + self.offset


def exact_model(div, sigma: float = S, latent: int = 1) -> FGMModel:
    nets = Networks(LinearEncoder(A, C, V), LinearDecoder(W, B), ExactLogDensity())
    return FGMModel(nets, div, critic_form="density", data_shape=(1,), latent_dim=latent, sigma=sigma,
                    learn_sigma=True, min_sigma=1e-4, generator_loss="saddle")


def quantile_noise(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n equal-weight grid of standard-normal quantiles: (first, second) coordinate.
    The mean of any smooth function over it approximates the expectation under N(0, I_2)."""
    q = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).float()
    a, b = torch.meshgrid(q, q, indexing="ij")
    return a.reshape(-1, 1), b.reshape(-1, 1)


# --------------------------------------------------------------------------- J = D_f(Q||P)
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_density_critic_J_is_the_integrated_divergence(plugins, name, params):
    """With l = log p_D exactly, J = E_Q[T(s)] - E_P[C(s)] equals D_f(Q||P) (section 2.1)."""
    div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
    f = alpha_f(params["alpha"]) if name == "alpha" else F_OF_U[name]
    exact = integrated_divergence(f)
    model = exact_model(div)
    first, second = quantile_noise(1000)
    # data side: x ~ N(0,1), z = A x + C + sqrt(V) eps; model side: z ~ N(0,1), x = W z + B + S eps
    noise = {"z": first, "x_eps": second, "z_eps": second}
    with torch.no_grad():
        j = float(model.critic_loss(first, noise).objective)
    # quadrature error of the 1000^2 quantile grid: under 1.5% (pearson's tail) of D_f
    assert abs(j - exact) < 1e-3 + 0.02 * abs(exact), (name, j, exact)
    if model.generator_uses_model_side:  # the saddle generator step minimises the same J
        with torch.no_grad():
            gen = model.generator_loss(first, noise)
        assert abs(float(gen.objective) - j) < 1e-5 * (1 + abs(j))
        assert abs(float(gen.loss) - j) < 1e-5 * (1 + abs(j))


STRICT = [(n, p) for n, p in CASES if n != "total_variation"]
STRICT_IDS = [i for i in IDS if i != "total_variation"]


@pytest.mark.parametrize("name,params", STRICT, ids=STRICT_IDS)
def test_exact_log_density_maximises_J_over_the_critic(plugins, name, params):
    """l = log p_D is the critic's optimum: dJ/dc = 0 for l + c at c = 0, and J(+-0.3) < J(0).
    (At the exact l, E_P[e^s] = 1, so a wrong C can still give the right value of J; it
    cannot give the right optimum.)"""
    div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
    model = exact_model(div)
    first, second = quantile_noise(600)
    noise = {"z": first, "x_eps": second, "z_eps": second}
    loss = model.critic_loss(first, noise).loss
    (grad,) = torch.autograd.grad(loss, [model.critic.offset])
    values = {}
    with torch.no_grad():
        for c in (-0.3, 0.0, 0.3):
            model.critic.offset.fill_(c)
            values[c] = float(model.critic_loss(first, noise).objective)
    assert abs(float(grad)) < 0.01, (name, float(grad))
    assert values[0.0] > max(values[-0.3], values[0.3]) + 1e-3, (name, values)


#: T(s) and C(s) written out (docs/math.md section 2.1), for the gradient test below
T_AND_C = {
    "reverse_kl": (lambda s: -torch.exp(-s), lambda s: s - 1),
    "js": (lambda s: math.log(2) - F.softplus(-s), lambda s: F.softplus(s) - math.log(2)),
    "pearson": (lambda s: 2 * torch.expm1(s), lambda s: torch.expm1(2 * s)),
    "hellinger": (lambda s: -torch.expm1(-s / 2), lambda s: torch.expm1(s / 2)),
}


@pytest.mark.parametrize("loss", ["saddle", "non_saturating"])
@pytest.mark.parametrize("name", sorted(T_AND_C))
def test_generator_gradient_is_the_gradient_of_the_written_out_objective(plugins, name, loss):
    """d/d(theta, phi, sigma) of the generator loss equals autograd of J written out here
    (saddle: E_Q[T(s)] - E_P[C(s)]; non_saturating: E_Q[T(s)] - E_P[T(s)]), with s built from
    the same parameters through the Gaussian densities, on the same noise."""
    div = plugins.get("divergences", name).factory(max_exp=40.0)
    model = exact_model(div)
    model.generator_loss_kind = loss
    first, second = quantile_noise(200)
    noise = {"z": first, "x_eps": second, "z_eps": second}
    params = [p for n, p in model.named_parameters() if not n.startswith("critic.")]
    got = torch.autograd.grad(model.generator_loss(first, noise).loss, params)

    enc, dec = model.encoder, model.decoder
    sigma = model.min_sigma + torch.exp(model.rho)

    def lg(v, m, var):
        return -0.5 * torch.log(2 * math.pi * var) - 0.5 * (v - m) ** 2 / var

    def s_of(x, z):
        return (lg(x, torch.tensor(0.0), torch.tensor(1.0)) + lg(z, enc.a * x + enc.c, enc.log_v.exp())
                - lg(z, torch.tensor(0.0), torch.tensor(1.0)) - lg(x, dec.w * z + dec.b, sigma ** 2)).squeeze(1)

    x_q, z_q = first, enc.a * first + enc.c + torch.exp(0.5 * enc.log_v) * second
    z_p, x_p = first, dec.w * first + dec.b + sigma * second
    t, c = T_AND_C[name]
    model_side = c(s_of(x_p, z_p)) if loss == "saddle" else t(s_of(x_p, z_p))
    want = torch.autograd.grad(t(s_of(x_q, z_q)).mean() - model_side.mean(), params)
    for n, a, b in zip([n for n, _ in model.named_parameters() if not n.startswith("critic.")], got, want):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-5, msg=f"{name} {loss} {n}")
    assert all(float(b.abs().max()) > 1e-4 for b in want)


def test_integrated_kl_matches_the_closed_form():
    """The quadrature itself, checked once: KL between the two Gaussian joints in closed form."""
    # Q: x ~ N(0,1), z|x ~ N(Ax+C, V); P: z ~ N(0,1), x|z ~ N(Wz+B, S^2); coordinates (x, z)
    mq = np.array([0.0, C])
    cq = np.array([[1.0, A], [A, A * A + V]])
    mp = np.array([B, 0.0])
    cp = np.array([[W * W + S * S, W], [W, 1.0]])
    ip = np.linalg.inv(cp)
    d = mp - mq
    kl = 0.5 * (np.trace(ip @ cq) + d @ ip @ d - 2 + np.log(np.linalg.det(cp) / np.linalg.det(cq)))
    assert abs(integrated_divergence(F_OF_U["kl"]) - kl) < 1e-6


# --------------------------------------------------------------------------- VAE (kl)
def independent_negative_elbo_mc(model: FGMModel, x, eps):
    """-[log p(x|z) + log p(z) - log q(z|x)] at z = mu + sd eps, every density written out."""
    enc = model.encoder
    mu, log_v = enc(x)
    z = mu + torch.exp(0.5 * log_v) * eps
    sigma = model.min_sigma + torch.exp(model.rho)
    mean = model.decoder(z)
    log_px = (-0.5 * math.log(2 * math.pi) - torch.log(sigma) - 0.5 * ((x - mean) / sigma) ** 2).sum(1)
    log_pz = (-0.5 * math.log(2 * math.pi) - 0.5 * z ** 2).sum(1)
    log_qz = (-0.5 * math.log(2 * math.pi) - 0.5 * log_v - 0.5 * eps ** 2).sum(1)
    return -(log_px + log_pz - log_qz)


def independent_negative_elbo_analytic(model: FGMModel, x, eps):
    """-[E_q log p(x|z) - KL(N(mu, v) || N(0, 1))], the KL in closed form."""
    mu, log_v = model.encoder(x)
    z = mu + torch.exp(0.5 * log_v) * eps
    sigma = model.min_sigma + torch.exp(model.rho)
    mean = model.decoder(z)
    log_px = (-0.5 * math.log(2 * math.pi) - torch.log(sigma) - 0.5 * ((x - mean) / sigma) ** 2).sum(1)
    kl = 0.5 * (mu ** 2 + log_v.exp() - 1 - log_v).sum(1)
    return -(log_px - kl)


def generator_grads(model: FGMModel, loss) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if not n.startswith("critic.")}
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (v if v is not None else torch.zeros_like(p)) for (n, p), v in zip(params.items(), g)}


def test_kl_generator_gradient_is_the_negative_elbo_gradient(plugins):
    """kl + density critic: the (theta, phi, sigma) gradient equals that of the negative ELBO
    (same posterior draws: exactly; analytic KL: in expectation over many draws)."""
    model = exact_model(plugins.get("divergences", "kl").factory(max_exp=40.0), sigma=0.7)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, generator=g) * 1.3 + 0.2
    noise = {"z": torch.randn(64, 1, generator=g), "x_eps": torch.randn(64, 1, generator=g),
             "z_eps": torch.randn(64, 1, generator=g)}
    out = model.generator_loss(x, noise)
    g_fgm = generator_grads(model, out.loss)
    g_mc = generator_grads(model, independent_negative_elbo_mc(model, x, noise["z_eps"]).mean())
    for name in g_mc:
        torch.testing.assert_close(g_fgm[name], g_mc[name], rtol=1e-5, atol=1e-6, msg=name)
    assert all(v.abs() > 1e-4 for v in g_mc.values())  # every parameter is really tested
    # the loss value: E_Q[1 + s] = 1 + E[l(x)] - ELBO (l = the exact log N(x; 0, 1))
    log_pd = (-0.5 * math.log(2 * math.pi) - 0.5 * x.squeeze(1) ** 2)
    with torch.no_grad():
        expected = 1 + log_pd.mean() - (-independent_negative_elbo_mc(model, x, noise["z_eps"])).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-5)

    # many draws per row: the same gradient as the analytic-KL ELBO, up to Monte Carlo error
    k = 4000
    xs = x.repeat(k, 1)
    eps = torch.randn(xs.shape[0], 1, generator=g)
    noise = {"z": eps, "x_eps": eps, "z_eps": eps}
    g_fgm = generator_grads(model, model.generator_loss(xs, noise).loss)
    g_an = generator_grads(model, independent_negative_elbo_analytic(model, xs, eps).mean())
    for name in g_an:
        assert abs(float(g_fgm[name] - g_an[name])) < 0.02 * (1 + abs(float(g_an[name]))), (name, g_fgm[name], g_an[name])


def test_kl_objective_identity_with_the_analytic_elbo(plugins):
    """J = 1 + E[l] - E_P[e^s] - E[ELBO] (docs/math.md section 3), with E_P[e^s] = integral of
    exp(l) = 1 for the exact l, and the ELBO with its analytic KL, over a quantile grid."""
    model = exact_model(plugins.get("divergences", "kl").factory(max_exp=40.0))
    first, second = quantile_noise(600)
    with torch.no_grad():
        j = float(model.critic_loss(first, {"z": first, "x_eps": second, "z_eps": second}).objective)
        log_pd = (-0.5 * math.log(2 * math.pi) - 0.5 * first.squeeze(1) ** 2)
        neg_elbo = independent_negative_elbo_analytic(model, first, second)
    expected = 1 + float(log_pd.mean()) - 1.0 + float(neg_elbo.mean())
    assert abs(j - expected) < 2e-3, (j, expected)


# --------------------------------------------------------------------------- likelihood
class DiagEncoder(nn.Module):
    """q(z|x) = N(M x + m, diag v): a linear map with fixed per-dimension variances."""

    def __init__(self, m_mat: torch.Tensor, m_vec: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.m_mat, self.m_vec, self.log_v = m_mat, m_vec, var.log()

    def forward(self, x):
        mu = x @ self.m_mat.T + self.m_vec
        return mu, self.log_v.expand_as(mu)


class MatrixDecoder(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, z):
        return z @ self.w.T + self.b


LIN_W = torch.tensor([[1.2, -0.3], [0.4, 0.9]])  # orthogonal columns: the exact posterior is diagonal
LIN_B = torch.tensor([0.5, -1.0])
LIN_SIGMA = 0.4


def linear_gaussian_log_px(x: np.ndarray) -> np.ndarray:
    """log N(x; b, W W^T + sigma^2 I), written out."""
    w, b = LIN_W.double().numpy(), LIN_B.double().numpy()
    cov = w @ w.T + LIN_SIGMA ** 2 * np.eye(2)
    r = x - b
    quad = np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r)
    return -0.5 * (2 * np.log(2 * np.pi) + np.log(np.linalg.det(cov)) + quad)


def linear_model(plugins, encoder: nn.Module, sigma_per_dim: bool = True) -> FGMModel:
    nets = Networks(encoder, MatrixDecoder(LIN_W, LIN_B), ExactLogDensity())
    return FGMModel(nets, plugins.get("divergences", "kl").factory(max_exp=40.0), critic_form="density",
                    data_shape=(2,), latent_dim=2, sigma=LIN_SIGMA, learn_sigma=False, min_sigma=1e-4,
                    sigma_per_dim=sigma_per_dim)


def exact_posterior_encoder() -> DiagEncoder:
    """The true posterior of the linear-Gaussian model: var_k = 1/(1 + |w_k|^2/s^2),
    mean_k = var_k w_k . (x - b) / s^2 (diagonal because W's columns are orthogonal)."""
    norms = (LIN_W ** 2).sum(0)
    var = 1 / (1 + norms / LIN_SIGMA ** 2)
    m_mat = (var[:, None] * LIN_W.T) / LIN_SIGMA ** 2
    return DiagEncoder(m_mat, -(m_mat @ LIN_B), var)


@pytest.mark.parametrize("sigma_per_dim", [True, False])
def test_likelihood_with_the_exact_posterior_is_exact_for_any_k(plugins, sigma_per_dim):
    """With q = the true posterior every importance weight equals p(x): log p(x) for K = 1.
    (One noise scale per dimension or one shared scalar: the same sigma here.)"""
    model = linear_model(plugins, exact_posterior_encoder(), sigma_per_dim)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1)) * 1.5
    truth = linear_gaussian_log_px(x.double().numpy())
    for k in (1, 3):
        eps = torch.randn(k, 50, 2, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            ll = model.log_likelihood(x, eps).double().numpy()
        np.testing.assert_allclose(ll, truth, atol=2e-4)


def test_likelihood_with_an_approximate_posterior_converges(plugins, tmp_path):
    """A mismatched encoder: K = 1 is a lower bound on average, K = 20000 is within 0.01 nats.
    Through :class:`Run` in data units (scale 2, shift 1): log p_data = log p_model - D log 2."""
    exact = exact_posterior_encoder()
    enc = DiagEncoder(exact.m_mat * 0.97, exact.m_vec + 0.03, exact.log_v.exp() * 1.3)
    model = linear_model(plugins, enc)
    info = DataInfo("linear", (2,), "vector", Scaling(shift=1.0, scale=2.0))
    run = Run(tmp_path, None, model, info, [])
    x_model = torch.randn(40, 2, generator=torch.Generator().manual_seed(2)) * 1.5 + LIN_B
    x_data = x_model * 2.0 + 1.0
    truth = linear_gaussian_log_px(x_model.double().numpy()) - 2 * math.log(2.0)
    ll = run.log_likelihood(x_data, k=20000, seed=0).double().numpy()
    np.testing.assert_allclose(ll, truth, atol=0.01)
    elbo = run.log_likelihood(x_data, k=1, seed=0).double().numpy()
    assert elbo.mean() < truth.mean() - 0.05  # the ELBO is a strict lower bound here


class TanhDecoder(nn.Module):
    """A small nonlinear decoder from 1-D z to 2-D x: (1.5 tanh(2z), z^2 - 0.5)."""

    def forward(self, z):
        return torch.cat([1.5 * torch.tanh(2 * z), z ** 2 - 0.5], 1)


class RoughEncoder(nn.Module):
    """A rough proposal, wider than the posterior: N(atanh(x_0 / 1.5) / 2, 0.6^2)."""

    def forward(self, x):
        mu = 0.5 * torch.atanh((x[:, :1] / 1.5).clamp(-0.95, 0.95))
        return mu, torch.full_like(mu, 2 * math.log(0.6))


def test_likelihood_of_a_nonlinear_decoder_matches_a_brute_force_integral(plugins):
    """log p(x) = log integral N(z; 0, 1) N(x; G(z), s^2 I) dz on a fine z grid."""
    sigma = 0.3
    nets = Networks(RoughEncoder(), TanhDecoder(), ExactLogDensity())
    model = FGMModel(nets, plugins.get("divergences", "kl").factory(max_exp=40.0), critic_form="density",
                     data_shape=(2,), latent_dim=1, sigma=sigma, learn_sigma=False, min_sigma=1e-4)
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(16, 1, generator=g)
    x = TanhDecoder()(z0) + sigma * torch.randn(16, 2, generator=g)
    zg = np.linspace(-9, 9, 36001)
    dz = zg[1] - zg[0]
    mean = np.stack([1.5 * np.tanh(2 * zg), zg ** 2 - 0.5], 1)  # (G, 2)
    xd = x.double().numpy()
    log_int = (log_normal(zg, 0.0, 1.0)[None]
               + log_normal(xd[:, None, 0], mean[None, :, 0], sigma ** 2)
               + log_normal(xd[:, None, 1], mean[None, :, 1], sigma ** 2))
    m = log_int.max(1, keepdims=True)
    truth = (m[:, 0] + np.log(np.exp(log_int - m).sum(1) * dz))
    eps = torch.randn(50000, 16, 1, generator=g)
    with torch.no_grad():
        ll = model.log_likelihood(x, eps).double().numpy()
    # importance-sampling noise (effective sample size 2-70% of K): 0.06 per row, 0.02 on average
    np.testing.assert_allclose(ll, truth, atol=0.06)
    assert np.abs(ll - truth).mean() < 0.02


# --------------------------------------------------------------------------- free critics
def exact_log_ratio(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log Q(x,z)/P(x,z) of the exact setting, written out (x, z: (B, 1))."""
    def lg(v, m, var):
        return -0.5 * math.log(2 * math.pi * var) - 0.5 * (v - m) ** 2 / var

    return (lg(x, 0.0, 1.0) + lg(z, A * x + C, V) - lg(z, 0.0, 1.0) - lg(x, W * z + B, S * S)).squeeze(1)


class OptimalJointCritic(nn.Module):
    """V*(x, z) with g_f(V*) = f'(Q/P): the maximiser of J over free joint critics."""

    def __init__(self, div) -> None:
        super().__init__()
        self.div = div
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, z=None):
        s = exact_log_ratio(x.double(), z.double())
        # g_f is the identity for kl and jeffrey; for js, g_f(v) = log 2 - softplus(-v), so v = s
        return (self.div.T(s) if self.div.name in ("kl", "jeffrey") else s).float() * self.scale


def assert_reads_back_log_pd(encoder: nn.Module, critic: nn.Module, div, form: str, k: int) -> None:
    """The model's log_density on a grid of x equals the exact log N(x; 0, 1), for k latent draws."""
    nets = Networks(encoder, LinearDecoder(W, B), critic)
    model = FGMModel(nets, div, critic_form=form, data_shape=(1,), latent_dim=1, sigma=S,
                     learn_sigma=False, min_sigma=1e-4)
    x = torch.linspace(-2.5, 2.5, 41).unsqueeze(1)
    eps = torch.randn(k, 41, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ld = model.log_density(x, eps)
    torch.testing.assert_close(ld, -0.5 * math.log(2 * math.pi) - 0.5 * x.squeeze(1) ** 2, atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", ["kl", "js", "jeffrey"])
def test_free_joint_critic_reads_back_the_data_density(plugins, name):
    """Section 4: log p_D(x) = log (f')^{-1}(T(x,z)) + log p(z) + log p(x|z) - log q(z|x), exact
    for every z when the joint critic is optimal."""
    div = plugins.get("divergences", name).factory(max_exp=40.0)
    assert_reads_back_log_pd(LinearEncoder(A, C, V), OptimalJointCritic(div), div, "joint", k=7)


class OptimalMarginalCritic(nn.Module):
    """V*(x) with g_f(V*) = f'(p_D/p_theta) for kl (g_f the identity): 1 + log p_D - log p_theta,
    p_theta = N(B, W^2 + S^2) the linear-Gaussian marginal."""

    def forward(self, x, z=None):
        x = x.squeeze(1).double()
        log_pd = -0.5 * math.log(2 * math.pi) - 0.5 * x ** 2
        var = W * W + S * S
        log_pt = -0.5 * math.log(2 * math.pi * var) - 0.5 * (x - B) ** 2 / var
        return (1 + log_pd - log_pt).float()


def exact_posterior_1d() -> LinearEncoder:
    """q(z|x) = p(z|x) of the 1-D linear-Gaussian generator: var = 1/(1 + W^2/S^2)."""
    var = 1 / (1 + W * W / (S * S))
    return LinearEncoder(var * W / (S * S), -var * W * B / (S * S), var)


def test_free_marginal_critic_reads_back_the_data_density(plugins):
    """Marginal critic: log p_D(x) = log (f')^{-1}(T(x)) + log p_theta(x), the latter importance
    sampled (exact here: the encoder is the true posterior)."""
    div = plugins.get("divergences", "kl").factory(max_exp=40.0)
    assert_reads_back_log_pd(exact_posterior_1d(), OptimalMarginalCritic(), div, "marginal", k=3)


def test_marginal_critic_fits_the_encoder_by_the_elbo(plugins):
    """f-GAN leaves the encoder out of J; fgm fits it by the negative ELBO with the decoder
    held fixed: the encoder gradient equals that of the written-out negative ELBO, and the
    decoder gradient is that of the f-GAN objective alone (js, saddle:
    E_pD[log 2 - softplus(-V)] - E_ptheta[softplus(V) - log 2])."""
    div = plugins.get("divergences", "js").factory(max_exp=40.0)
    nets = Networks(LinearEncoder(A, C, V), LinearDecoder(W, B), OptimalMarginalCritic())
    model = FGMModel(nets, div, critic_form="marginal", data_shape=(1,), latent_dim=1, sigma=S,
                     learn_sigma=True, min_sigma=1e-4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 1, generator=g)
    noise = {k: torch.randn(64, 1, generator=g) for k in ("z", "x_eps", "z_eps")}
    enc, dec = list(model.encoder.parameters()), [model.decoder.w, model.decoder.b, model.rho]
    got = torch.autograd.grad(model.generator_loss(x, noise).loss, enc + dec)
    want_enc = torch.autograd.grad(independent_negative_elbo_mc(model, x, noise["z_eps"]).mean(), enc)
    x_p = model.decoder(noise["z"]) + (model.min_sigma + torch.exp(model.rho)) * noise["x_eps"]
    critic = model.critic
    fgan = (math.log(2) - F.softplus(-critic(x))).mean() - (F.softplus(critic(x_p)) - math.log(2)).mean()
    want_dec = torch.autograd.grad(fgan, dec)
    for a, b in zip(got, want_enc + want_dec):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(float(b.abs().max()) > 1e-4 for b in want_enc + want_dec)
    assert all(p.requires_grad for p in model.decoder.parameters())  # the decoder is frozen only for the fit


def test_a_critic_step_moves_the_estimator_toward_log_pd(plugins):
    """Gradient descent on the critic loss raises J: from l = log p_D + 0.3, one small step
    lowers the offset and increases J (for a few divergences with the density critic)."""
    first, second = quantile_noise(300)
    noise = {"z": first, "x_eps": second, "z_eps": second}
    for name in ("kl", "js", "reverse_kl", "pearson"):
        model = exact_model(plugins.get("divergences", name).factory(max_exp=40.0))
        with torch.no_grad():
            model.critic.offset.fill_(0.3)
        before = float(model.critic_loss(first, noise).objective)
        (grad,) = torch.autograd.grad(model.critic_loss(first, noise).loss, [model.critic.offset])
        with torch.no_grad():
            model.critic.offset -= 0.05 * grad
            after = float(model.critic_loss(first, noise).objective)
            offset = float(model.critic.offset)
        assert 0 < offset < 0.3 and after > before, (name, offset, before, after)


class QuadraticCritic(nn.Module):
    """V(x, z) = (|x|^2 + |z|^2) / 2: its gradient at (x, z) is (x, z)."""

    def forward(self, x, z=None):
        out = 0.5 * (x ** 2).sum(1)
        return out if z is None else out + 0.5 * (z ** 2).sum(1)


@pytest.mark.parametrize("form", ["joint", "marginal"])
def test_gradient_penalty_is_the_wgan_gp_formula(plugins, form):
    """WGAN-GP: weight * mean (|grad V(x_hat, z_hat)| - 1)^2 at a x_q + (1 - a) x_p (and z)."""
    div = plugins.get("divergences", "js").factory(max_exp=40.0)
    nets = Networks(LinearEncoder(A, C, V), LinearDecoder(W, B), QuadraticCritic())
    kw = dict(critic_form=form, data_shape=(1,), latent_dim=1, sigma=S, learn_sigma=False, min_sigma=1e-4)
    plain = FGMModel(nets, div, **kw)
    penalised = FGMModel(nets, div, gradient_penalty=3.0, **kw)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 1, generator=g)
    noise = {k: torch.randn(32, 1, generator=g) for k in ("z", "x_eps", "z_eps")}
    noise["gp"] = torch.rand(32, generator=g)
    penalty = float((penalised.critic_loss(x, noise).loss - plain.critic_loss(x, noise).loss).detach())
    a = noise["gp"].unsqueeze(1)
    x_p = W * noise["z"] + B + S * noise["x_eps"]
    sq = (a * x + (1 - a) * x_p) ** 2
    if form == "joint":
        z_q = A * x + C + math.sqrt(V) * noise["z_eps"]
        sq = sq + (a * z_q + (1 - a) * noise["z"]) ** 2
    want = 3.0 * float(((sq.sum(1).sqrt() - 1) ** 2).mean())
    assert abs(penalty - want) < 1e-4 * (1 + want), (penalty, want)


# --------------------------------------------------------------------------- free-critic edges
def test_inverse_f_prime_outside_its_range_gives_the_bound_on_that_side(plugins):
    """alpha = 2: f' ranges over (-1, inf), so t = -5 lies below it and (f')^{-1} is the lower
    bound -60; alpha = 0.5: f' ranges over (-inf, 2), so t = 5 gives the upper bound 60."""
    low = plugins.get("divergences", "alpha").factory(max_exp=40.0, alpha=2.0)
    high = plugins.get("divergences", "alpha").factory(max_exp=40.0, alpha=0.5)
    assert float(low.inverse_f_prime_log(torch.tensor([-5.0]))) == -60.0
    assert float(high.inverse_f_prime_log(torch.tensor([5.0]))) == 60.0
    # inside the range: log u with f'(u) = t, f'(u) = (u^(a-1) - 1)/(a-1)
    t = torch.tensor([0.5], dtype=torch.float64)
    assert abs(float(low.inverse_f_prime_log(t)) - math.log(1 + t.item())) < 1e-9


def test_js_conjugate_counts_no_clamps_inside_its_domain(plugins):
    """f*(t) = -log(2 - e^t) for t < log 2, with nothing clamped away from the boundary."""
    js = plugins.get("divergences", "js").factory(max_exp=40.0)
    js.pop_clamped()
    t = torch.linspace(-5.0, 0.6, 29, dtype=torch.float64)
    got = js.conjugate(t)
    assert js.pop_clamped() == 0
    torch.testing.assert_close(got, -torch.log(2 - torch.exp(t)), rtol=1e-12, atol=1e-12)
