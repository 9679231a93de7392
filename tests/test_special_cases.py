"""docs/math.md section 3: the VAE and f-GAN special cases, and the variational bound."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from fgm_core.build import DataInfo, make_model
from fgm_core.components import Networks, Scaling
from fgm_core.config import build_config
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet

BUILTINS = ["kl", "reverse_kl", "pearson", "neyman", "hellinger", "js", "gan", "total_variation", "jeffrey"]


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=["divergences", "mlp", "datasets", "report"], strict=True)


def tiny_model(plugins: PluginSet, divergence: str = "kl", critic: str = "density", dim: int = 2,
               latent: int = 2, **model) -> FGMModel:
    cfg = build_config({"divergence": {"name": divergence}, "critic": {"form": critic},
                        "model": {"latent_dim": latent, "options": {"hidden": 16, "depth": 2}, **model}})
    info = DataInfo("test", (dim,), "vector", Scaling())
    return make_model(cfg, plugins, info)


def noise_for(model: FGMModel, b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, shape = model.latent_dim, model.data_shape
    return {"z": torch.randn(b, d, generator=g), "z_eps": torch.randn(b, d, generator=g),
            "x_eps": torch.randn(b, *shape, generator=g), "gp": torch.rand(b, generator=g)}


def grads(model: FGMModel, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if not n.startswith("critic.")}
    g = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (x if x is not None else torch.zeros_like(p)) for (n, p), x in zip(params.items(), g)}


# --------------------------------------------------------------------------- VAE
# Every density below is written out (normaliser included), never taken from fgm_core.model.
LOG_2PI = math.log(2 * math.pi)


def log_normal(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag exp(2 log_std)), summed over the last dimension."""
    return (-0.5 * LOG_2PI - log_std - 0.5 * ((x - mean) * torch.exp(-log_std)) ** 2).sum(-1)


def sigma_of(model: FGMModel) -> torch.Tensor:
    return model.min_sigma + torch.exp(model.rho)


def mc_log_weight(model: FGMModel, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(z) + log p(x|z) - log q(z|x): the ELBO's integrand at one posterior draw."""
    mu, logvar = model.encoder(x)
    zero = torch.zeros_like(z)
    return (log_normal(z, zero, zero) + log_normal(x, model.decoder(z), torch.log(sigma_of(model)).expand_as(x))
            - log_normal(z, mu, 0.5 * logvar))


def elbo(model: FGMModel, x: torch.Tensor, z_eps: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x|z)] (one draw) - KL(q(z|x) || N(0, I)) with the KL in closed form."""
    mu, logvar = model.encoder(x)
    z = mu + torch.exp(0.5 * logvar) * z_eps
    rec = log_normal(x, model.decoder(z), torch.log(sigma_of(model)).expand_as(x))
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return rec - kl


def test_kl_density_generator_update_is_the_vae_update(plugins):
    torch.manual_seed(0)
    model = tiny_model(plugins, "kl", "density")
    x = torch.randn(64, 2)
    noise = noise_for(model, 64)
    g_fgm = grads(model, model.generator_loss(x, noise).loss)
    # the Monte-Carlo ELBO with the same posterior sample; its analytic-KL variant has the
    # same expectation (tests/test_math.py compares that one over many draws)
    mu, logvar = model.encoder(x)
    z = mu + torch.exp(0.5 * logvar) * noise["z_eps"]
    g_vae = grads(model, -mc_log_weight(model, x, z).mean())
    for name in g_vae:
        torch.testing.assert_close(g_fgm[name], g_vae[name], rtol=1e-5, atol=1e-6, msg=name)
    assert g_vae["rho"].abs().sum() > 0 and any(g.abs().sum() > 0 for g in g_vae.values())


def test_kl_density_objective_identity(plugins):
    """J = 1 + E[l] - E_P[e^s] - E[ELBO] on a batch (docs/math.md section 3, VAE), with s on
    the model side and the ELBO written out here."""
    torch.manual_seed(1)
    model = tiny_model(plugins, "kl", "density")
    x = torch.randn(128, 2)
    noise = noise_for(model, 128)
    with torch.no_grad():
        j = model.critic_loss(x, noise).objective
        mu, logvar = model.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * noise["z_eps"]
        x_p = model.decoder(noise["z"]) + sigma_of(model) * noise["x_eps"]
        s_p = model.critic(x_p) - mc_log_weight(model, x_p, noise["z"])  # l + log q - log p(z) - log p(x|z)
        expected = 1 + model.critic(x).mean() - torch.exp(s_p).mean() - mc_log_weight(model, x, z).mean()
    torch.testing.assert_close(j, expected, rtol=1e-5, atol=1e-5)


def test_trained_kl_run_matches_a_plain_vae(plugins, tmp_path):
    """The test ELBO of fgm (kl, density) matches a hand-written VAE trained the same way."""
    import fgm_core as fgm

    steps, batch = 400, 128
    cfg = {"data": {"dataset": "ring8", "options": {"n_train": 4096, "n_test": 1024}},
           "model": {"latent_dim": 2, "options": {"hidden": 32, "depth": 2}},
           "divergence": {"name": "kl"}, "optim": {"batch_size": batch, "lr": 2e-3, "schedule": "constant"},
           "run": {"steps": steps, "out_dir": str(tmp_path), "progress": False, "tensorboard": False,
                   "checkpoint_every": steps, "seed": 3}}
    run = fgm.train(cfg, progress=False, plugins=plugins)
    from fgm_core.build import load_data

    bundle = load_data(run.config, plugins)
    # plain VAE: same networks (same seed), same data order, Adam, analytic KL
    vae = make_model(run.config, plugins, run.info)
    params = [p for n, p in vae.named_parameters() if not n.startswith("critic.") and n != "rho"]
    opt = torch.optim.Adam([{"params": params}, {"params": [vae.rho], "lr": 2e-2}], lr=2e-3, betas=(0.5, 0.999))
    data = bundle.train
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        loss = -elbo(vae, data[idx], torch.randn(batch, 2, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = bundle.test
    eps = torch.randn(test.shape[0], 2, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        e_fgm = elbo(run.model, test, eps).mean().item()
        e_vae = elbo(vae, test, eps).mean().item()
    assert math.isfinite(e_fgm) and math.isfinite(e_vae)
    assert abs(e_fgm - e_vae) < 0.35, (e_fgm, e_vae)


def plain_vae_cfg(tmp_path, steps: int, **critic) -> dict:
    return {"data": {"dataset": "ring8", "options": {"n_train": 2048, "n_test": 512}},
            "model": {"latent_dim": 2, "options": {"hidden": 16, "depth": 2}},
            "divergence": {"name": "kl"}, "critic": {"n_critic": 0, **critic}, "optim": {"batch_size": 64},
            "run": {"steps": steps, "out_dir": str(tmp_path), "progress": False, "tensorboard": False,
                    "checkpoint_every": steps, "log_every": 10, "eval_samples": 300, "name": f"vae{steps}"}}


def test_n_critic_zero_is_the_plain_vae(plugins, tmp_path):
    """critic.n_critic = 0 with kl: the critic is never stepped, the encoder/decoder are, and
    nothing pretends to have a density estimator."""
    import json

    import fgm_core as fgm
    from fgm_core.errors import FGMError

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        short = fgm.train(plain_vae_cfg(tmp_path, 10), progress=False, plugins=plugins)
        long = fgm.train(plain_vae_cfg(tmp_path, 30), progress=False, plugins=plugins)
    s1, s2 = short.model.state_dict(), long.model.state_dict()
    critic = [k for k in s1 if k.startswith("critic.")]
    assert critic and all(torch.equal(s1[k], s2[k]) for k in critic)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith(("encoder.", "decoder.")))
    rows = [json.loads(line) for line in (long.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert all(math.isfinite(r["loss_generator"]) and "divergence" not in r for r in rows)
    summary = json.loads((long.path / "summary.json").read_text())
    assert "test_log_likelihood" in summary and "test_log_density" not in summary
    assert torch.isfinite(long.log_likelihood(torch.zeros(4, 2))).all()
    with pytest.raises(FGMError, match="n_critic = 0"):
        long.log_density(torch.zeros(4, 2))


def test_n_critic_zero_needs_a_constant_model_term(plugins, tmp_path):
    import fgm_core as fgm
    from fgm_core.errors import FGMError

    cfg = plain_vae_cfg(tmp_path, 10)
    cfg["divergence"]["name"] = "js"
    with pytest.raises(FGMError, match="n_critic = 0 trains no critic"):
        fgm.train(cfg, progress=False, plugins=plugins)
    with pytest.raises(FGMError, match="n_critic = 0 trains no critic"):
        fgm.train(plain_vae_cfg(tmp_path, 10, form="joint"), progress=False, plugins=plugins)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------- f-GAN
@pytest.mark.parametrize("name", BUILTINS)
def test_marginal_critic_is_the_fgan_objective(plugins, name):
    torch.manual_seed(2)
    model = tiny_model(plugins, name, "marginal")
    x = torch.randn(256, 2)
    noise = noise_for(model, 256)
    d = model.divergence
    with torch.no_grad():
        j = model.critic_loss(x, noise).objective
        x_fake = model.decoder(noise["z"]) + torch.exp(model.log_sigma) * noise["x_eps"]
        direct = d.activation(model.critic(x)).mean() - d.conjugate(d.activation(model.critic(x_fake))).mean()
    torch.testing.assert_close(j, direct, rtol=1e-5, atol=1e-5)


def test_marginal_objective_ignores_the_encoder(plugins):
    torch.manual_seed(3)
    model = tiny_model(plugins, "js", "marginal")
    x, noise = torch.randn(32, 2), noise_for(model, 32)
    j1 = model.critic_loss(x, noise).objective
    for p in model.encoder.parameters():
        p.data.add_(1.0)
    assert torch.equal(j1, model.critic_loss(x, noise).objective)


# --------------------------------------------------------------------------- variational bound
def numeric_divergence(div, mp: float, mq: float, sd: float = 1.0) -> float:
    """D_f(p || q) = integral of q f(p/q) for two 1-D Gaussians, on a fine grid."""
    x = torch.linspace(-14, 14, 200_001, dtype=torch.float64)
    lp = -0.5 * ((x - mp) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
    lq = -0.5 * ((x - mq) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))
    u = torch.exp(lp - lq)
    integrand = torch.exp(lq) * div.f(u)
    return float(torch.trapezoid(integrand, x))


class FixedGaussian(nn.Module):
    """A 'decoder' whose output is a constant mean: p(x) = N(mean, 1) in 1-D."""

    def __init__(self, mean: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([mean]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean.expand(z.shape[0], 1)


class MLPCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x, z=None):
        return self.net(x).squeeze(-1)


class NullEncoder(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 1), torch.zeros(x.shape[0], 1)


@pytest.mark.parametrize("name,params", [(n, {}) for n in BUILTINS] + [("alpha", {"alpha": 0.5}), ("alpha", {"alpha": 2.0})])
def test_trained_critic_estimates_the_divergence_of_two_gaussians(plugins, name, params):
    """Maximising J over a free critic approaches D_f(N(0,1) || N(0.7,1))."""
    torch.manual_seed(0)
    div = plugins.get("divergences", name).factory(max_exp=40.0, **params)
    nets = Networks(NullEncoder(), FixedGaussian(0.7), MLPCritic())
    model = FGMModel(nets, div, critic_form="marginal", data_shape=(1,), latent_dim=1, sigma=1.0,
                     learn_sigma=False, min_sigma=1e-3)
    opt = torch.optim.Adam(model.critic.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(700):
        b = 512
        x = torch.randn(b, 1, generator=g)
        noise = {"z": torch.randn(b, 1, generator=g), "x_eps": torch.randn(b, 1, generator=g)}
        loss = model.critic_loss(x, noise)
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
    # evaluate on a large fresh sample
    with torch.no_grad():
        b = 100_000
        x = torch.randn(b, 1, generator=g)
        noise = {"z": torch.randn(b, 1, generator=g), "x_eps": torch.randn(b, 1, generator=g)}
        est = float(model.critic_loss(x, noise).objective)
    exact = numeric_divergence(div, 0.0, 0.7, 1.0)
    assert math.isfinite(est)
    assert est <= exact + 0.02 + 0.03 * abs(exact), (name, est, exact)  # a lower bound, up to noise
    assert abs(est - exact) < 0.03 + 0.08 * abs(exact), (name, est, exact)
