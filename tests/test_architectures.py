"""The built-in architecture plugins (mlp, dcgan, wgan_arch), exercised through the registry."""

from __future__ import annotations

import pytest
import torch

from fgm_core.components import CRITIC_FORMS, NetworkSpec
from fgm_core.errors import FGMError
from fgm_core.plugins import PluginSet

ARCHS = ("mlp", "dcgan", "wgan_arch")
SHAPES = {
    "mlp": [((2,), "vector"), ((784,), "vector"), ((1, 28, 28), "image")],
    "dcgan": [((1, 28, 28), "image"), ((3, 32, 32), "image")],
    "wgan_arch": [((1, 28, 28), "image"), ((3, 32, 32), "image")],
}
# Narrow networks keep the optimisation tests fast; the shape tests use the defaults.
SMALL = {"mlp": {"hidden": 16, "depth": 2}, "dcgan": {"channels": 8, "z_hidden": 16},
         "wgan_arch": {"dim": 8, "z_hidden": 16}}
LATENT = 8
CASES = [(a, s, k) for a in ARCHS for s, k in SHAPES[a]]


def _id(case):
    a, s, _ = case
    return f"{a}-{'x'.join(map(str, s))}"


@pytest.fixture(scope="module")
def plugins():
    mp = pytest.MonkeyPatch()
    mp.setenv("FGM_PLUGINS", "mlp,dcgan,wgan_arch")
    mp.delenv("FGM_PLUGINS_TOML", raising=False)
    try:
        ps = PluginSet()
    finally:
        mp.undo()
    assert not ps.failures, ps.failures
    return ps


def arch(ps, name):
    return ps.get("architectures", name).factory()


def build(ps, name, shape, kind, critic, options=None, seed=0):
    torch.manual_seed(seed)
    return arch(ps, name).build(NetworkSpec(tuple(shape), kind, LATENT, critic, dict(options or {})))


def batch(shape, kind, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    if kind == "image":
        x = torch.tanh(x)
    return x, torch.randn(n, LATENT, generator=g)


# --------------------------------------------------------------------------- registry
def test_registered_with_descriptions(plugins):
    for name in ARCHS:
        comp = plugins.get("architectures", name)
        assert comp.plugin == name and comp.description
        assert arch(plugins, name).name == name


def test_presets(plugins):
    assert plugins.preset("mlp") == {"model": {"architecture": "mlp"}}
    for name in ("dcgan", "wgan_arch"):
        preset = plugins.preset(name)
        assert preset["model"]["architecture"] == name
        assert preset["data"] == {"dataset": "shapes"}
        assert preset["model"]["latent_dim"] > 2  # image presets need a wider latent
    assert plugins.preset("wgan_arch")["critic"] == {"gradient_penalty": 10.0}


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("critic", CRITIC_FORMS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_output_shapes_default_options(plugins, case, critic):
    name, shape, kind = case
    spec = NetworkSpec(shape, kind, LATENT, critic)
    assert arch(plugins, name).check(spec) is None
    nets = build(plugins, name, shape, kind, critic)
    x, z = batch(shape, kind, n=3)
    mu, logvar = nets.encoder(x)
    assert mu.shape == (3, LATENT) and logvar.shape == (3, LATENT)
    assert torch.isfinite(mu).all() and logvar.abs().max() < 2.0  # starts near N(mu, I)
    xm = nets.decoder(z)
    assert xm.shape == (3, *shape)
    if kind == "image":
        assert xm.abs().max() <= 1.0
    v = nets.critic(x, z) if critic == "joint" else nets.critic(x)
    assert v.shape == (3,) and torch.isfinite(v).all()


@pytest.mark.parametrize("critic", CRITIC_FORMS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_critic_z_dependence_and_per_sample(plugins, case, critic):
    name, shape, kind = case
    nets = build(plugins, name, shape, kind, critic, SMALL[name])
    x, z = batch(shape, kind)
    v = nets.critic(x, z)
    v2 = nets.critic(x, z + 1.0)
    if critic == "joint":
        assert not torch.allclose(v, v2), "joint critic ignores z"
        with pytest.raises(ValueError):
            nets.critic(x)
    else:
        assert torch.equal(v, v2), f"{critic} critic must ignore z"
        assert torch.equal(v, nets.critic(x))
    # no batch statistics: one sample's critic value does not depend on the others
    x3 = x.clone()
    x3[1:] = -x3[1:]
    v3 = nets.critic(x3, z)
    torch.testing.assert_close(v3[0], v[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("critic", CRITIC_FORMS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_gradients_reach_every_parameter(plugins, case, critic):
    name, shape, kind = case
    nets = build(plugins, name, shape, kind, critic, SMALL[name])
    x, z = batch(shape, kind, n=6)
    g = torch.Generator().manual_seed(3)
    target = torch.randn(6, generator=g)
    modules = (nets.encoder, nets.decoder, nets.critic)
    params = [p for m in modules for p in m.parameters()]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3)

    def loss_fn():
        mu, logvar = nets.encoder(x)
        rec = (nets.decoder(mu) - x).pow(2).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        crit = (nets.critic(x, z) - target).pow(2).mean()
        return rec + kl + crit

    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        if step == 0:
            for m in modules:
                for pname, p in m.named_parameters():
                    assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient to {pname}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, params))


# --------------------------------------------------------------------------- check()
@pytest.mark.parametrize("name", ["dcgan", "wgan_arch"])
@pytest.mark.parametrize(
    "shape,kind,word",
    [((1, 30, 30), "image", "30x30"), ((2, 28, 28), "image", "channels"), ((3, 32, 28), "image", "32x28"),
     ((784,), "vector", "vector"), ((28, 28), "image", "(C, H, W)")],
)
def test_conv_check_rejects_unsupported_shapes(plugins, name, shape, kind, word):
    a = arch(plugins, name)
    why = a.check(NetworkSpec(shape, kind, LATENT, "density"))
    assert isinstance(why, str) and "\n" not in why and name in why and word in why
    with pytest.raises(FGMError):
        a.build(NetworkSpec(shape, kind, LATENT, "density"))


def test_check_rejects_unknown_critic_and_bad_mlp_shapes(plugins):
    for name in ARCHS:
        shape, kind = SHAPES[name][-1]
        why = arch(plugins, name).check(NetworkSpec(shape, kind, LATENT, "pairwise"))
        assert why and "pairwise" in why
    mlp = arch(plugins, "mlp")
    assert "(D,)" in mlp.check(NetworkSpec((4, 4), "vector", LATENT, "joint"))
    assert "(C, H, W)" in mlp.check(NetworkSpec((784,), "image", LATENT, "joint"))
    assert mlp.check(NetworkSpec((3, 64, 64), "image", LATENT, "joint")) is None
    assert arch(plugins, "wgan_arch").check(NetworkSpec((3, 64, 64), "image", LATENT, "joint")) is None


@pytest.mark.parametrize("name", ["dcgan", "wgan_arch"])
def test_conv_64x64(plugins, name):
    nets = build(plugins, name, (3, 64, 64), "image", "joint", SMALL[name])
    x, z = batch((3, 64, 64), "image", n=2)
    assert nets.decoder(z).shape == (2, 3, 64, 64)
    assert nets.encoder(x)[0].shape == (2, LATENT)
    assert nets.critic(x, z).shape == (2,)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "name,options,word",
    [
        ("mlp", {"widht": 3}, "widht"),
        ("mlp", {"activation": "gelu"}, "activation"),
        ("mlp", {"norm": "group"}, "norm"),
        ("mlp", {"critic_norm": "batch"}, "critic_norm"),
        ("mlp", {"hidden": 0}, "hidden"),
        ("mlp", {"depth": 2.5}, "depth"),
        ("mlp", {"spectral_norm": True}, "spectral_norm"),  # a critic.* setting, not a model option
        ("mlp", {"logvar_bound": "big"}, "logvar_bound"),
        ("dcgan", {"dim": 32}, "dim"),
        ("dcgan", {"critic_norm": "batch"}, "critic_norm"),
        ("wgan_arch", {"channels": 32}, "channels"),
        ("wgan_arch", {"logvar_bound": -1}, "logvar_bound"),
    ],
)
def test_bad_options_raise_fgm_error(plugins, name, options, word):
    shape, kind = SHAPES[name][0]
    with pytest.raises(FGMError) as info:
        build(plugins, name, shape, kind, "joint", options)
    err = info.value
    assert word in err.message and err.hint
    if word in {"widht", "dim", "channels", "spectral_norm"}:  # unknown: the hint lists what is accepted
        assert "accepted options" in err.hint
        assert ("hidden" if name == "mlp" else "norm") in err.hint


def test_options_take_effect(plugins):
    nets = build(plugins, "mlp", (2,), "vector", "joint",
                 {"hidden": 7, "depth": 1, "critic_hidden": 5, "critic_depth": 2, "activation": "elu",
                  "norm": "layer", "critic_norm": "layer"})
    linear = [m for m in nets.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [7, 2]
    assert any(isinstance(m, torch.nn.ELU) for m in nets.encoder.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in nets.encoder.modules())
    c_lin = [m.out_features for m in nets.critic.modules() if isinstance(m, torch.nn.Linear)]
    assert c_lin == [5, 5, 1]
    batchnorm = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    for name in ARCHS:
        shape, kind = SHAPES[name][-1]
        for crit in CRITIC_FORMS:
            n = build(plugins, name, shape, kind, crit, {**SMALL[name], "norm": "batch"})
            assert not any(isinstance(m, batchnorm) for m in n.critic.modules())
    wg = build(plugins, "wgan_arch", (1, 28, 28), "image", "density", {"dim": 4})
    convs = [m.out_channels for m in wg.critic.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [4, 8, 16]
    dc = build(plugins, "dcgan", (3, 32, 32), "image", "marginal", {"channels": 4, "norm": "none"})
    assert [m.out_channels for m in dc.encoder.modules() if isinstance(m, torch.nn.Conv2d)] == [4, 8, 16]
    assert not any(isinstance(m, batchnorm) for m in dc.decoder.modules())


@pytest.mark.parametrize("name", ARCHS)
def test_spectral_norm_and_prepare_export(plugins, name):
    """Spectral norm on every critic layer (as the core applies for critic.spectral_norm),
    baked into plain weights by prepare_export without changing the critic's values."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm

    shape, kind = SHAPES[name][-1]
    a = arch(plugins, name)
    torch.manual_seed(0)
    nets = a.build(NetworkSpec(shape, kind, LATENT, "joint", SMALL[name]))
    for m in list(nets.critic.modules()):
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            spectral_norm(m)
    x, z = batch(shape, kind)
    nets.critic(x, z)  # one power iteration in train mode
    nets.critic.eval()
    want = nets.critic(x, z)
    ready = a.prepare_export(nets)
    assert not any(parametrize.is_parametrized(m) for m in ready.critic.modules())
    assert not ready.encoder.training and not ready.decoder.training
    torch.testing.assert_close(ready.critic(x, z), want)


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", ARCHS)
def test_deterministic_under_manual_seed(plugins, name):
    shape, kind = SHAPES[name][-1]
    a = build(plugins, name, shape, kind, "joint", SMALL[name], seed=5)
    b = build(plugins, name, shape, kind, "joint", SMALL[name], seed=5)
    c = build(plugins, name, shape, kind, "joint", SMALL[name], seed=6)
    for ma, mb, mc in zip((a.encoder, a.decoder, a.critic), (b.encoder, b.decoder, b.critic),
                          (c.encoder, c.decoder, c.critic)):
        sa, sb, sc = ma.state_dict(), mb.state_dict(), mc.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("critic", ["joint", "density"])
@pytest.mark.parametrize("name", ARCHS)
def test_torch_export_dynamic_batch(plugins, name, critic):
    from torch.export import Dim, export

    shape, kind = SHAPES[name][-1]
    a = arch(plugins, name)
    torch.manual_seed(0)
    nets = a.prepare_export(a.build(NetworkSpec(shape, kind, LATENT, critic, SMALL[name])))
    x, z = batch(shape, kind, n=3)
    xb, zb = batch(shape, kind, n=5, seed=7)
    B = Dim("batch", min=1, max=4096)
    dec = export(nets.decoder, (z,), dynamic_shapes=({0: B},))
    torch.testing.assert_close(dec.module()(zb), nets.decoder(zb))
    enc = export(nets.encoder, (x,), dynamic_shapes=({0: B},))
    for got, want in zip(enc.module()(xb), nets.encoder(xb)):
        torch.testing.assert_close(got, want)
    if critic == "joint":
        crit = export(nets.critic, (x, z), dynamic_shapes=({0: B}, {0: B}))
        torch.testing.assert_close(crit.module()(xb, zb), nets.critic(xb, zb))
    else:
        crit = export(nets.critic, (x,), dynamic_shapes=({0: B},))
        torch.testing.assert_close(crit.module()(xb), nets.critic(xb))


@pytest.mark.parametrize("critic", ["joint", "marginal"])
@pytest.mark.parametrize("name", ARCHS)
def test_gradient_penalty_double_backward(plugins, name, critic):
    """WGAN-GP needs d/d(params) of ||d critic / d(x, z)||: second derivatives must flow."""
    shape, kind = SHAPES[name][-1]
    nets = build(plugins, name, shape, kind, critic, {**SMALL[name], "critic_norm": "layer"})
    x, z = batch(shape, kind)
    x = x.requires_grad_(True)
    z = z.requires_grad_(True)
    inputs = [x, z] if critic == "joint" else [x]
    out = nets.critic(*inputs)
    grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
    norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads) + 1e-12)
    assert norm.shape == (4,) and (norm > 0).all()
    ((norm - 1) ** 2).mean().backward()
    weights = [p for n, p in nets.critic.named_parameters() if n.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_mlp_fourier_critic_input(plugins):
    """critic_fourier = n puts [x, sin(xB), cos(xB)], B ~ N(0, scale^2) of shape (D, n), in
    front of the critic (any form); the default (0) leaves the critic on raw x."""
    def first_in(nets):
        return next(m for m in nets.critic.modules() if isinstance(m, torch.nn.Linear)).in_features

    nets = build(plugins, "mlp", (2,), "vector", "density", {"critic_fourier": 64, "critic_fourier_scale": 5.0})
    assert first_in(nets) == 2 + 2 * 64
    freq = dict(nets.critic.named_buffers())["x_trunk.1.freq"]
    assert freq.shape == (2, 64) and 3.5 < float(freq.std()) < 6.5  # N(0, 5^2), 128 draws
    x = torch.tensor([[0.3, -0.2]])
    h = x @ freq  # written out: raw x, then sines, then cosines of the projections
    assert torch.allclose(nets.critic.x_trunk(x), torch.cat([x, torch.sin(h), torch.cos(h)], 1))
    assert first_in(build(plugins, "mlp", (2,), "vector", "density")) == 2
    assert first_in(build(plugins, "mlp", (2,), "vector", "joint", {"critic_fourier": 8})) == 2 + 16 + LATENT
    with pytest.raises(FGMError, match="critic_fourier"):
        build(plugins, "mlp", (2,), "vector", "density", {"critic_fourier": -1})
