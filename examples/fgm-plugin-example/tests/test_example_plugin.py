"""Tests of the example plugin: run them with ``pytest`` after
``pip install -e examples/fgm-plugin-example`` (or a plain ``pip install``).

They check the components directly and through fgm's plugin loader, exactly as a user's
``fgm train`` would find them.
"""

from __future__ import annotations

import math

import pytest
import torch

import fgm_plugin_example as ex
from fgm_core.components import DataRequest, NetworkSpec
from fgm_core.errors import FGMError

# --------------------------------------------------------------------------- divergence


@pytest.fixture
def div():
    return ex.make_triangular(max_exp=40.0)


def test_divergence_closed_forms(div):
    u = torch.logspace(-4, 4, 801, dtype=torch.float64)
    s = torch.log(u)
    f_prime = 1 - 4 / (u + 1) ** 2
    # f(1) = 0 and f'(1) = 0 (the attribute agrees)
    assert float(div.f(torch.tensor(1.0))) == 0.0
    assert div.f_prime_at_1 == 0.0 and float(div.T(torch.tensor(0.0))) == 0.0
    torch.testing.assert_close(div.T(s), f_prime, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div.C(s), u * f_prime - div.f(u), rtol=1e-9, atol=1e-9)


def test_conjugacy(div):
    """Fenchel-Young with equality at t = f'(u): f(u) + f*(f'(u)) = u f'(u)."""
    u = torch.logspace(-4, 4, 801, dtype=torch.float64)
    t = 1 - 4 / (u + 1) ** 2
    torch.testing.assert_close(div.f(u) + div.conjugate(t), u * t, rtol=1e-9, atol=1e-9)
    # and f*(t) = sup_u (u t - f(u)) on a grid of t inside and outside the range of f'
    ts = torch.linspace(-4.5, 0.99, 23, dtype=torch.float64)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-6, 6, 100_001, dtype=torch.float64)])
    sup = (grid[None] * ts[:, None] - div.f(grid)[None]).max(1).values
    torch.testing.assert_close(div.conjugate(ts), sup, rtol=1e-4, atol=1e-4)
    assert float(div.conjugate(torch.tensor(1.0))) == pytest.approx(3.0)
    assert math.isinf(float(div.conjugate(torch.tensor(1.5))))


def test_activation_maps_onto_the_range_of_f_prime(div):
    v = torch.linspace(-10, 10, 101, dtype=torch.float64)
    t = div.activation(v)
    assert bool(((t > -3) & (t < 1)).all())
    assert float(div.activation(torch.tensor(0.0))) == pytest.approx(-1.0)
    # the log ratio a free critic implies, read back in closed form
    u = torch.logspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(div.inverse_f_prime_log(1 - 4 / (u + 1) ** 2), torch.log(u), rtol=1e-6, atol=1e-6)


def test_numerics_are_finite_in_float32(div):
    x = torch.linspace(-80, 80, 2001, requires_grad=True)
    total = div.T(x) + div.C(x) + div.conjugate(div.activation(x))
    total.sum().backward()
    assert torch.isfinite(total).all() and torch.isfinite(x.grad).all()
    assert div.pop_clamped() > 0  # e^{80} was clamped at max_exp and counted
    assert div.pop_clamped() == 0


def test_divergence_rejects_params():
    with pytest.raises(FGMError, match="no parameter 'alpha'"):
        ex.make_triangular(alpha=0.5)


# --------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("form", ["density", "joint", "marginal"])
def test_network_shapes(form):
    arch = ex.TinyMLP()
    spec = NetworkSpec(data_shape=(2,), data_kind="vector", latent_dim=3, critic=form,
                       options={"hidden": 16, "depth": 1})
    assert arch.check(spec) is None
    nets = arch.build(spec)
    x, z = torch.randn(5, 2), torch.randn(5, 3)
    mu, logvar = nets.encoder(x)
    assert mu.shape == (5, 3) and logvar.shape == (5, 3)
    assert nets.decoder(z).shape == (5, 2)
    v = nets.critic(x, z) if form == "joint" else nets.critic(x)
    assert v.shape == (5,)


def test_architecture_rejects_what_it_cannot_build():
    arch = ex.TinyMLP()
    image = NetworkSpec((1, 28, 28), "image", 8, "density")
    assert "vector" in arch.check(image)
    with pytest.raises(FGMError, match="widht"):
        arch.check(NetworkSpec((2,), "vector", 8, "density", {"widht": 3}))


# --------------------------------------------------------------------------- dataset


def test_dataset_is_deterministic():
    a = ex.spiral(DataRequest(options={"n_train": 500, "n_test": 50}, seed=3, test_fraction=0.1))
    b = ex.spiral(DataRequest(options={"n_train": 500, "n_test": 50}, seed=3, test_fraction=0.1))
    c = ex.spiral(DataRequest(options={"n_train": 500, "n_test": 50}, seed=4, test_fraction=0.1))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.train, c.train)
    assert a.train.shape == (500, 2) and a.test.shape == (50, 2) and a.train.dtype == torch.float32
    assert a.kind == "vector" and a.label_names == ["arm-0", "arm-1"]
    assert set(a.train_labels.tolist()) == {0, 1} and a.train_labels.dtype == torch.int64
    assert a.train.abs().max() < 1.5


def test_dataset_validates_options():
    with pytest.raises(FGMError, match="unknown option 'n_points'"):
        ex.spiral(DataRequest(options={"n_points": 5}, seed=0, test_fraction=0.1))
    with pytest.raises(FGMError, match="noise"):
        ex.spiral(DataRequest(options={"noise": -1}, seed=0, test_fraction=0.1))


# --------------------------------------------------------------------------- through fgm


def test_registered_through_the_entry_point(monkeypatch):
    """The installed entry point makes everything visible to fgm's plugin loader."""
    from fgm_core.plugins import PluginSet

    monkeypatch.setenv("FGM_PLUGINS", "example")
    ps = PluginSet()
    info = ps.infos["example"]
    assert info.error is None and info.version == ex.__version__
    assert ps.names("divergences") == ["triangular"]
    assert ps.names("architectures") == ["tiny_mlp"]
    assert ps.names("datasets") == ["spiral"]
    assert ps.preset("example") == ex.plugin_preset()
