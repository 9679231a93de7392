"""The latent prior p(z) as a component: ``normal`` (the core's N(0, I)) and the built-in
``mixture`` (plugin ``priors``).

Checked against references written out here: the mixture density as an explicit sum of K
Gaussian densities, per-component sample moments, the exact marginal likelihood of a
linear-Gaussian model with a Gaussian-mixture prior, the sampling rule of Run and of the ONNX
runtime recomputed by hand; and that the default prior changes nothing (no extra random numbers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fgmhelp import cli
from safetensors.torch import load_file
from torch import nn

import fgm_core as fgm
from fgm_core.api import resolve_config
from fgm_core.build import DataInfo
from fgm_core.components import Networks, Scaling
from fgm_core.config import build_config
from fgm_core.errors import FGMError
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet
from fgm_core.run import Run
from fgm_core.trainer import Trainer

PLUGINS = ["divergences", "mlp", "datasets", "priors"]


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=PLUGINS, strict=True)


def mixture(plugins: PluginSet, d: int, **options):
    return plugins.get("priors", "mixture").factory(d, options)


def tiny(out_dir: Path, name: str, steps: int = 12, **model) -> dict:
    return {
        "data": {"dataset": "ring8", "options": {"n_train": 512, "n_test": 64}},
        "model": {"architecture": "mlp", "latent_dim": 2, "options": {"hidden": 16, "depth": 1}, **model},
        "divergence": {"name": "js"},
        "optim": {"batch_size": 64, "schedule": "constant", "lr": 3e-3},
        "run": {"steps": steps, "seed": 3, "checkpoint_every": steps, "threads": 1, "device": "cpu",
                "tensorboard": False, "progress": False, "eval_samples": 64, "out_dir": str(out_dir), "name": name},
    }


def set_params(prior, means: np.ndarray, stds: np.ndarray) -> None:
    with torch.no_grad():
        prior.means.copy_(torch.as_tensor(means, dtype=torch.float32))
        prior.rho.copy_(torch.log(torch.as_tensor(stds, dtype=torch.float32) - prior.min_std))


# --------------------------------------------------------------------------- the mixture's math
def test_mixture_log_prob_is_the_written_out_sum_of_gaussians(plugins):
    rng = np.random.default_rng(0)
    k, d = 5, 3
    means = rng.normal(0, 2, (k, d))
    stds = rng.uniform(0.3, 1.5, (k, d))
    prior = mixture(plugins, d, components=k)
    set_params(prior, means, stds)
    z = rng.normal(0, 2.5, (40, d))
    dens = np.zeros(len(z))
    for j in range(k):  # (1/K) sum_j prod_i N(z_i; m_ji, s_ji^2)
        per_dim = np.exp(-((z - means[j]) ** 2) / (2 * stds[j] ** 2)) / (np.sqrt(2 * np.pi) * stds[j])
        dens += per_dim.prod(1) / k
    got = prior.log_prob(torch.as_tensor(z, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, np.log(dens), rtol=1e-5, atol=1e-4)
    far = prior.log_prob(torch.full((2, d), 200.0))  # in log space: finite where the density underflows
    assert torch.isfinite(far).all() and (far < -1000).all()


def test_mixture_samples_have_each_components_moments(plugins):
    k, d, n = 4, 2, 40_000
    means = np.array([[3.0, 0.0], [0.0, -2.0], [-1.0, 1.0], [5.0, 5.0]])
    stds = np.array([[0.5, 1.0], [0.2, 0.3], [1.5, 0.7], [0.1, 0.1]])
    prior = mixture(plugins, d, components=k)
    set_params(prior, means, stds)
    g = torch.Generator().manual_seed(0)
    eps, u = torch.randn(n, d, generator=g), torch.rand(n, generator=g)
    z = prior.sample(eps, u)
    comp = np.minimum((u.numpy() * k).astype(int), k - 1)  # the contract: component floor(u K)
    zn = z.detach().double().numpy()
    for j in range(k):
        rows = zn[comp == j]
        assert abs(len(rows) / n - 1 / k) < 0.01
        np.testing.assert_allclose(rows.mean(0), means[j], atol=5 * stds[j].max() / math.sqrt(len(rows)))
        np.testing.assert_allclose(np.cov(rows.T), np.diag(stds[j] ** 2), atol=0.05 * stds[j].max() ** 2 + 1e-3)
    z.sum().backward()  # reparameterised: d sum(z) / d means_j = rows drawn from component j
    np.testing.assert_array_equal(prior.means.grad[:, 0].numpy(), np.bincount(comp, minlength=k))


def test_mixture_initial_means_are_spread_on_the_radius(plugins):
    prior = mixture(plugins, 2, components=8, radius=3.0, std=0.4)
    a = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(prior.means.detach().numpy(), 3.0 * np.stack([np.cos(a), np.sin(a)], 1), atol=1e-6)
    np.testing.assert_allclose(prior.stds.detach().numpy(), 0.4, rtol=1e-6)
    high = mixture(plugins, 6, components=5, radius=2.0)
    np.testing.assert_allclose(high.means.norm(dim=1).detach().numpy(), 2.0, rtol=1e-5)
    assert torch.pdist(high.means.detach()).min() > 0.1
    fixed = mixture(plugins, 2, learn=False)
    assert not list(fixed.parameters()) and {"means", "rho"} <= set(fixed.state_dict())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"component": 3}, "mixture prior has no option 'component'"),
        ({"components": 0}, "option 'components' must be 1 to 4096"),
        ({"components": 2.5}, "option 'components' must be an integer"),
        ({"std": 0.0}, "option 'std' must be greater than min_std"),
        ({"radius": -1}, "option 'radius' must be >= 0"),
        ({"learn": "yes"}, "option 'learn' must be true or false"),
        ({"min_std": True}, "option 'min_std' must be a finite number"),
    ],
)
def test_bad_mixture_options_are_one_error(plugins, options, message):
    with pytest.raises(FGMError, match=message):
        mixture(plugins, 2, **options)


# --------------------------------------------------------------------------- the likelihood
class LinearDecoder(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, z):
        return z @ self.w.T + self.b


class InverseEncoder(nn.Module):
    """A proposal q(z|x) = N(W^-1 (x - b), 0.5^2 I): around the posterior, somewhat wider."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w_inv, self.b = torch.linalg.inv(w), b

    def forward(self, x):
        mu = (x - self.b) @ self.w_inv.T
        return mu, torch.full_like(mu, 2 * math.log(0.5))


class ZeroCritic(nn.Module):
    def forward(self, x, z=None):
        return torch.zeros(x.shape[0])


def test_likelihood_with_a_mixture_prior_is_the_exact_marginal(plugins, tmp_path):
    """x = W z + b + sigma e with z ~ (1/K) sum_k N(mu_k, S_k): p(x) is the mixture of
    N(W mu_k + b, W S_k W^T + sigma^2 I), written out; importance sampling with K = 200000
    draws agrees within 0.02 nats, and the standard-normal p(z) would be far off."""
    w = torch.tensor([[1.1, 0.4], [-0.3, 0.8]])
    b = torch.tensor([0.2, -0.5])
    sigma = 0.3
    means = np.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    stds = np.array([[0.4, 0.6], [0.3, 0.3], [0.8, 0.2]])
    prior = mixture(plugins, 2, components=3)
    set_params(prior, means, stds)
    nets = Networks(InverseEncoder(w, b), LinearDecoder(w, b), ZeroCritic())
    model = FGMModel(nets, plugins.get("divergences", "kl").factory(max_exp=40.0), critic_form="density",
                     data_shape=(2,), latent_dim=2, sigma=sigma, learn_sigma=False, min_sigma=1e-4, prior=prior)
    run = Run(tmp_path, None, model, DataInfo("linear", (2,), "vector", Scaling()), [])
    x = run.sample(20, seed=5)  # points where the model has mass

    def log_marginal(mus, covs):
        wn, bn, xs = w.double().numpy(), b.double().numpy(), x.double().numpy()
        terms = []
        for mu, s in zip(mus, covs):
            cov = wn @ s @ wn.T + sigma**2 * np.eye(2)
            r = xs - (wn @ mu + bn)
            quad = np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r)
            terms.append(-0.5 * (2 * np.log(2 * np.pi) + np.log(np.linalg.det(cov)) + quad))
        t = np.stack(terms)
        top = t.max(0)
        return top + np.log(np.exp(t - top).sum(0)) - np.log(len(mus))

    truth = log_marginal(means, [np.diag(s**2) for s in stds])
    ll = run.log_likelihood(x, k=200_000, seed=0).double().numpy()
    np.testing.assert_allclose(ll, truth, atol=0.02)
    wrong = log_marginal([np.zeros(2)], [np.eye(2)])  # what an N(0, I) prior term would give
    assert np.abs(wrong - truth).mean() > 0.5


# --------------------------------------------------------------------------- training
def test_the_default_prior_draws_nothing_extra(plugins, tmp_path):
    """The training noise of the default prior is z, z_eps, x_eps from the seeded generator and
    nothing more (as before priors existed); a mixture adds the uniforms z_u after them."""
    for prior, extra in (("normal", False), ("mixture", True)):
        cfg = build_config(tiny(tmp_path, prior, prior=prior))
        trainer = Trainer(cfg, plugins)
        noise = trainer.noise()
        g = torch.Generator().manual_seed(cfg.run.seed)
        want = {"z": torch.randn(64, 2, generator=g), "z_eps": torch.randn(64, 2, generator=g),
                "x_eps": torch.randn(64, 2, generator=g)}
        if extra:
            want["z_u"] = torch.rand(64, generator=g)
        assert set(noise) == set(want)
        for key, value in want.items():
            assert torch.equal(noise[key], value), key
        assert torch.equal(trainer.gen.get_state(), g.get_state())
        assert not list(trainer.model.prior.parameters()) if prior == "normal" else True


def test_vector_data_defaults_to_the_mixture_prior_when_it_is_loaded(plugins, tmp_path):
    cfg, _ = resolve_config(tiny(tmp_path, "unset"), plugins=plugins)
    assert cfg.model.prior == "mixture"
    without = PluginSet(only=[p for p in PLUGINS if p != "priors"], strict=True)
    assert resolve_config(tiny(tmp_path, "unset"), plugins=without)[0].model.prior == "normal"
    explicit = tiny(tmp_path, "normal", prior="normal")
    assert resolve_config(explicit, plugins=plugins)[0].model.prior == "normal"


def test_explicit_normal_prior_is_the_run_without_the_priors_plugin_bit_for_bit(plugins, tmp_path):
    without = PluginSet(only=[p for p in PLUGINS if p != "priors"], strict=True)
    a = fgm.train(tiny(tmp_path, "unset"), plugins=without, progress=False)
    b = fgm.train(tiny(tmp_path, "normal", prior="normal"), plugins=plugins, progress=False)
    wa, wb = load_file(str(a.path / "model.safetensors")), load_file(str(b.path / "model.safetensors"))
    assert set(wa) == set(wb) and not any(k.startswith("prior.") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    la = (a.path / "metrics.jsonl").read_text().splitlines()
    lb = (b.path / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if "time" not in k and "second" not in k} for line in la + lb]
    assert strip[: len(la)] == strip[len(la):]
    # Run.sample of the default prior: z then eps from the seeded generator, written out
    g = torch.Generator().manual_seed(9)
    z, eps = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    with torch.no_grad():
        x = a.model.decoder(z) + torch.exp(a.model.log_sigma) * eps
    torch.testing.assert_close(a.sample(5, seed=9), a.info.scaling.to_data(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def mixture_run(plugins, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior-runs")
    cfg = tiny(out, "mixture", steps=40, prior="mixture", prior_options={"components": 8, "std": 0.3})
    return fgm.train(cfg, plugins=plugins, progress=False).path


def test_a_mixture_prior_trains_saves_loads_and_samples(mixture_run):
    run = Run.load(mixture_run, device="cpu")
    prior = run.model.prior
    weights = load_file(str(mixture_run / "model.safetensors"))
    torch.testing.assert_close(prior.means.detach(), weights["prior.means"], rtol=0, atol=0)
    torch.testing.assert_close(prior.rho.detach(), weights["prior.rho"], rtol=0, atol=0)
    a = 2 * np.pi * np.arange(8) / 8
    start = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    moved = np.abs(prior.means.detach().numpy() - start).max()
    assert moved > 1e-3, "the means did not train"
    assert np.abs(prior.stds.detach().numpy() - 0.3).max() > 1e-4, "the scales did not train"
    # Run.sample: e, then u (component floor(u K)), then the generator noise, written out
    n, g = 7, torch.Generator().manual_seed(4)
    e, u, eps = torch.randn(n, 2, generator=g), torch.rand(n, generator=g), torch.randn(n, 2, generator=g)
    k = (u * 8).long()
    with torch.no_grad():
        z = prior.means[k] + prior.stds[k] * e
        x = run.model.decoder(z) + torch.exp(run.model.log_sigma) * eps
    torch.testing.assert_close(run.sample(n, seed=4), run.info.scaling.to_data(x))


def test_changing_the_prior_on_resume_is_refused(mixture_run, capsys, tmp_path):
    for setting in ("model.prior=normal", "model.prior_options.components=4"):
        code, _, err = cli(capsys, "train", "--resume", str(mixture_run), "--set", "run.steps=50", "--set", setting)
        key = setting.split("=")[0].rsplit(".", 1)[0] if "options" in setting else "model.prior"
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f"cannot change {key}" in err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["model.prior=nope"], "fgm: error: unknown prior 'nope' (available: mixture, normal"),
        (["model.prior=mixture", "model.prior_options.components=-2"], "option 'components' must be 1 to 4096"),
        (["model.prior=mixture", "model.prior_options.scale=2"], "mixture prior has no option 'scale'"),
        (["model.prior=normal", "model.prior_options.components=3"], "prior 'normal' takes no options"),
        (["model.prior=mixture", "model.prior_options.std=nan"], "must be a finite number"),
    ],
)
def test_bad_prior_settings_are_one_error_line(capsys, tmp_path, monkeypatch, settings, message):
    monkeypatch.setenv("FGM_PLUGINS", ",".join(PLUGINS))
    argv = ["train", "--out", str(tmp_path / "runs"), "--steps", "1"]
    for s in settings:
        argv += ["--set", s]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --------------------------------------------------------------------------- ONNX
def test_onnx_export_samples_from_the_mixture_prior(mixture_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from fgm_onnx.runtime import OnnxRuntimeModel

    run = Run.load(mixture_run, device="cpu")
    manifest = fgm.export(run, tmp_path / "export")
    prior = manifest["prior"]
    assert prior["kind"] == "mixture" and prior["components"] == 8
    means, stds = np.asarray(prior["means"]), np.asarray(prior["stds"])
    np.testing.assert_allclose(means, run.model.prior.means.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(stds, run.model.prior.stds.detach().numpy(), rtol=1e-6)
    m = OnnxRuntimeModel(tmp_path / "export", device="cpu")
    # the runtime's rule, written out: e, then the components, then the generator noise
    n, rng = 9, np.random.default_rng(11)
    e = rng.standard_normal((n, 2), dtype=np.float32)
    k = rng.integers(8, size=n)
    eps = rng.standard_normal((n, 2), dtype=np.float32)
    z = (means[k] + stds[k] * e).astype(np.float32)
    with torch.no_grad():
        x = run.model.decoder(torch.as_tensor(z)) + torch.exp(run.model.log_sigma) * torch.as_tensor(eps)
    np.testing.assert_allclose(m.sample(n, seed=11), run.info.scaling.to_data(x).numpy(), rtol=1e-4, atol=1e-4)
    # the likelihood graph carries the mixture's log p(z): same numbers as the model for the same eps
    xs = run.sample(6, seed=1).numpy()
    keps = np.random.default_rng(2).standard_normal((16, 6, 2)).astype(np.float32)
    with torch.no_grad():
        ref = run.model.log_likelihood(run.info.scaling.to_model(torch.as_tensor(xs)), torch.as_tensor(keps))
    ref = ref.numpy() + run.info.scaling.log_det(2)
    np.testing.assert_allclose(m.log_likelihood(xs, k=16, eps=keps), ref, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------- the documented plugin
def test_the_prior_plugin_example_in_the_docs_works(capsys, tmp_path, monkeypatch):
    """The example of docs/plugins.md ("### Prior") as a local plugin: it trains, and its
    parameters are saved with the weights."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    block = text.split("# shifted_prior.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "shifted_prior.py").write_text(block)
    monkeypatch.setenv("FGM_PLUGINS", "divergences,mlp,datasets,shifted_prior")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--plugin", "./shifted_prior.py", "--set", "model.prior=shifted", "--set",
            "model.prior_options.std=0.5", "--steps", "3", "--out", "runs", "--name", "doc", "-q",
            "--set", "data.options.n_train=256", "--set", "optim.batch_size=64", "--set", "run.eval_samples=64"]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    w = load_file(str(tmp_path / "runs" / "doc" / "model.safetensors"))
    assert w["prior.log_std"].shape == (2,) and not torch.allclose(w["prior.log_std"], torch.full((2,), math.log(0.5)))
    bad = [a.replace("std=0.5", "scale=1").replace("doc", "bad") for a in argv]
    code, _, err = cli(capsys, *bad)
    assert code == 1 and "prior 'shifted' has no option 'scale'" in err, err
