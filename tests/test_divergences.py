"""The divergences plugin against docs/math.md sections 2.2 and 6.

Everything goes through the plugin registry (``PluginSet`` restricted to ``divergences``),
as the core uses it. The closed forms are checked against their definition by f alone
(autograd of f, Fenchel-Young, the derived divergence of section 6), and for float32
robustness over the ranges training produces.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fgm_core.components import Divergence
from fgm_core.errors import FGMError
from fgm_core.plugins import PluginSet

EXPECTED = ["alpha", "custom", "gan", "hellinger", "jeffrey", "js", "kl", "neyman", "pearson",
            "reverse_kl", "total_variation"]
CASES = [(n, {}) for n in EXPECTED if n not in ("alpha", "custom")] + [
    ("alpha", {"alpha": a}) for a in (-1.0, 0.5, 2.0, 3.0)
]
IDS = [n + (f"={p['alpha']:g}" if p else "") for n, p in CASES]
STRICT = [c for c in CASES if c[0] != "total_variation"]
STRICT_IDS = [i for i in IDS if i != "total_variation"]
NO_EXP = {"js", "gan", "total_variation"}  # T and C use no exponential: nothing to clamp
F64 = torch.float64

settings.register_profile("fgm-div", deadline=None, max_examples=20, derandomize=True, database=None)
PROFILE = settings.get_profile("fgm-div")


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=["divergences"], strict=True)


def make(plugins: PluginSet, name: str, params: dict | None = None, max_exp: float = 40.0) -> Divergence:
    return plugins.get("divergences", name).factory(max_exp=max_exp, **(params or {}))


def f_prime(d: Divergence, u: torch.Tensor) -> torch.Tensor:
    x = u.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d.f(x).sum(), x)
    return g


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-8, atol: float = 1e-8) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- registry
def test_registry_lists_every_divergence_with_a_description(plugins):
    assert plugins.names("divergences") == EXPECTED
    for name in EXPECTED:
        comp = plugins.get("divergences", name)
        assert comp.plugin == "divergences" and comp.description


def test_unknown_params_are_rejected_by_name(plugins):
    with pytest.raises(FGMError) as e:
        make(plugins, "kl", {"alpha": 2})
    assert "'alpha'" in e.value.message and "none" in e.value.hint
    with pytest.raises(FGMError) as e:
        make(plugins, "alpha", {"alpa": 2})
    assert "'alpa'" in e.value.message and "alpha" in e.value.hint
    with pytest.raises(FGMError) as e:
        make(plugins, "custom", {"formula": "u*log(u)", "ofset": 1})
    assert "'ofset'" in e.value.message and "formula" in e.value.hint and "offset" in e.value.hint
    with pytest.raises(FGMError):
        make(plugins, "kl", max_exp=-1.0)


@pytest.mark.parametrize("bad", [0, 1, 1.0, "2", float("nan"), True])
def test_alpha_rejects_limit_cases_and_non_numbers(plugins, bad):
    with pytest.raises(FGMError) as e:
        make(plugins, "alpha", {"alpha": bad})
    if bad == 1 and not isinstance(bad, bool):
        assert "kl" in str(e.value)
    if bad == 0:
        assert "reverse_kl" in str(e.value)


def test_alpha_default_and_special_members(plugins):
    u = torch.logspace(-3, 3, 50, dtype=F64)
    assert make(plugins, "alpha").describe()["alpha"] == 0.5
    close(make(plugins, "alpha", {"alpha": 2}).f(u), make(plugins, "pearson").f(u) / 2)
    close(make(plugins, "alpha", {"alpha": 0.5}).f(u), 2 * make(plugins, "hellinger").f(u))


# --------------------------------------------------------------------------- f and its conjugate
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_fenchel_young_equality(plugins, name, params):
    """f(u) + f*(f'(u)) = u f'(u): the conjugate is attained at t = f'(u)."""
    d = make(plugins, name, params)

    @PROFILE
    @given(st.lists(st.floats(-3, 3), min_size=1, max_size=16))
    def check(xs):
        u = 10 ** torch.tensor(xs, dtype=F64)
        t = f_prime(d, u)
        lhs, rhs = d.f(u) + d.conjugate(t), u * t
        tol = 1e-9 * (1 + rhs.abs() + d.f(u).abs())
        assert ((lhs - rhs).abs() <= tol).all(), (u, lhs, rhs)

    check()


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_conjugate_is_an_upper_bound(plugins, name, params):
    """f*(t) >= u t - f(u) for every u > 0 and t in dom f* (the range of the activation)."""
    d = make(plugins, name, params)

    @PROFILE
    @given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-10, 10)), min_size=1, max_size=16))
    def check(pairs):
        u = 10 ** torch.tensor([p[0] for p in pairs], dtype=F64)
        t = d.activation(torch.tensor([p[1] for p in pairs], dtype=F64))
        bound = u * t - d.f(u)
        assert (d.conjugate(t) >= bound - 1e-9 * (1 + bound.abs())).all()

    check()


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_T_and_C_match_f(plugins, name, params):
    """T(s) = f'(e^s) by autograd, C(s) = e^s T(s) - f(e^s)."""
    d = make(plugins, name, params)
    s = torch.linspace(-5, 5, 101, dtype=F64)
    s = s[s != 0]  # total variation: f' jumps at u = 1
    u = torch.exp(s)
    close(d.T(s), f_prime(d, u))
    close(d.C(s), u * d.T(s) - d.f(u))


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_offset_and_f_prime_at_1(plugins, name, params):
    d = make(plugins, name, params)
    one = torch.ones(1, dtype=F64)
    assert d.f(one).item() == pytest.approx(d.f_offset, abs=1e-12)
    assert f_prime(d, one).item() == pytest.approx(d.f_prime_at_1, abs=1e-12)
    assert d.T(torch.zeros(1, dtype=F64)).item() == pytest.approx(d.f_prime_at_1, abs=1e-12)
    assert d.describe()["name"] == name
    assert (name == "gan") == (d.f_offset != 0)


# --------------------------------------------------------------------------- closed form == derived
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_closed_forms_match_the_divergence_derived_from_f(plugins, name, params):
    from fgm_divergences import from_f

    d = make(plugins, name, params)
    dd = from_f(d.f, name=name, offset=d.f_offset)
    assert dd.strictly_convex == d.strictly_convex
    assert dd.supports_density == d.supports_density
    assert dd.f_prime_at_1 == pytest.approx(d.f_prime_at_1, abs=1e-9)
    for est, exact in zip(dd.range_f_prime, d.range_f_prime):
        assert est == exact if math.isinf(exact) else est == pytest.approx(exact, abs=1e-6)

    s = torch.linspace(-5, 5, 41, dtype=F64)
    s = s[s != 0]
    close(dd.T(s), d.T(s), rtol=1e-7, atol=1e-9)
    close(dd.C(s), d.C(s), rtol=1e-7, atol=1e-9)

    t = d.activation(torch.linspace(-10, 10, 81, dtype=F64))
    if name == "pearson":  # the closed form extends t^2/4 + t below -2 (a looser bound)
        t = t[t >= -2]
    close(dd.conjugate(t), d.conjugate(t), rtol=1e-6, atol=1e-6)

    v = torch.linspace(-10, 10, 81, dtype=F64)
    assert torch.isfinite(dd.conjugate(dd.activation(v))).all()
    assert torch.isfinite(d.conjugate(dd.activation(v))).all()  # derived g_f maps into dom f*


# --------------------------------------------------------------------------- free critics
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_activation_maps_onto_dom_conjugate(plugins, name, params):
    d = make(plugins, name, params)
    # float32 over the whole range training can produce: values and gradients finite
    v = torch.linspace(-60, 60, 481, requires_grad=True)
    t = d.activation(v)
    c, ca = d.conjugate(t), d.conj_act(v)
    (gc,) = torch.autograd.grad(c.sum(), v, retain_graph=True)
    (gca,) = torch.autograd.grad(ca.sum(), v)
    for x in (t, c, ca, gc, gca):
        assert torch.isfinite(x).all()
    # conj_act is the same function, computed in one piece
    v64 = torch.linspace(-10, 10, 81, dtype=F64)
    close(d.conj_act(v64), d.conjugate(d.activation(v64)), rtol=1e-9, atol=1e-9)
    # the activation's ends are the ends of the range of f' (pearson and alpha > 1 go
    # further down, where their conjugate is extended by a valid bound)
    ends = d.activation(torch.tensor([-40.0, 40.0], dtype=F64))
    lo, hi = ends.min().item(), ends.max().item()
    a, b = d.range_f_prime
    assert hi == pytest.approx(b, abs=1e-9) if math.isfinite(b) else hi > 25
    if name == "pearson" or (name == "alpha" and params["alpha"] > 1):
        assert lo < a and math.isfinite(d.conjugate(torch.tensor([lo], dtype=F64)).item())
    else:
        assert lo == pytest.approx(a, abs=1e-9) if math.isfinite(a) else lo < -25


@pytest.mark.parametrize(("name", "t", "expect"), [
    ("reverse_kl", 0.5, math.inf), ("neyman", 1.5, math.inf), ("hellinger", 1.5, math.inf),
    ("js", 0.7, math.inf), ("gan", 0.1, math.inf), ("total_variation", 0.6, math.inf),
    ("neyman", 1.0, 2.0), ("total_variation", 0.5, 0.5), ("pearson", -4.0, 0.0),
])
def test_conjugate_outside_and_on_the_boundary_of_its_domain(plugins, name, t, expect):
    assert make(plugins, name).conjugate(torch.tensor([t], dtype=F64)).item() == expect


def test_boundary_saturation_is_counted_and_conj_act_stays_exact(plugins):
    js = make(plugins, "js")
    v = torch.tensor([30.0])
    assert js.activation(v).item() == pytest.approx(math.log(2))  # float32 hits the boundary
    assert math.isfinite(js.conjugate(js.activation(v)).item())
    assert js.pop_clamped() == 1
    assert js.conj_act(v).item() == pytest.approx(30 - math.log(2))
    gan = make(plugins, "gan")
    assert gan.conjugate(gan.activation(v)).item() == pytest.approx(30.0, rel=1e-6)  # no rounding loss


# --------------------------------------------------------------------------- density critic numerics
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_T_C_finite_with_gradients_and_clamps_counted(plugins, name, params):
    d = make(plugins, name, params, max_exp=40.0)
    inner = torch.linspace(-5, 5, 41, requires_grad=True)
    (d.T(inner).sum() + d.C(inner).sum()).backward()
    assert d.pop_clamped() == 0
    d = make(plugins, name, params, max_exp=10.0)
    s = torch.linspace(-60, 60, 481, requires_grad=True)
    T, C = d.T(s), d.C(s)
    (gT,) = torch.autograd.grad(T.sum(), s, retain_graph=True)
    (gC,) = torch.autograd.grad(C.sum(), s)
    for x in (T, C, gT, gC):
        assert torch.isfinite(x).all()
    clamped = d.pop_clamped()
    assert (clamped == 0) if name in NO_EXP else (clamped > 0)
    assert d.pop_clamped() == 0  # reset


def test_kl_T_is_never_clamped(plugins):
    kl = make(plugins, "kl")
    s = torch.tensor([100.0, -100.0], requires_grad=True)
    T = kl.T(s)
    assert T.tolist() == [101.0, -99.0]
    T.sum().backward()
    assert s.grad.tolist() == [1.0, 1.0]
    assert kl.pop_clamped() == 0
    assert math.isfinite(kl.C(s).sum().item()) and kl.pop_clamped() == 1


# --------------------------------------------------------------------------- inverse of f'
@pytest.mark.parametrize(("name", "params"), STRICT, ids=STRICT_IDS)
def test_inverse_f_prime_log_recovers_the_log_ratio(plugins, name, params):
    d = make(plugins, name, params)
    s = torch.linspace(-10, 10, 81, dtype=F64)
    t = d.T(s)
    close(d.inverse_f_prime_log(t), s, rtol=1e-7, atol=1e-7)
    # agrees with the base-class bisection, which it replaces
    close(d.inverse_f_prime_log(t), Divergence.inverse_f_prime_log(d, t), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(d.inverse_f_prime_log(d.activation(torch.linspace(-60, 60, 121)))).all()


def test_inverse_outside_the_range_of_f_prime_is_bounded(plugins):
    assert make(plugins, "pearson").inverse_f_prime_log(torch.tensor([-3.0])).item() == -60.0
    assert make(plugins, "js").inverse_f_prime_log(torch.tensor([1.0])).item() == 60.0
    with pytest.raises(FGMError, match="strictly convex"):
        make(plugins, "total_variation").inverse_f_prime_log(torch.zeros(2))


def test_lambert_w_of_exp():
    from fgm_divergences import lambert_w_exp, log_lambert_w_exp

    y = torch.cat([torch.linspace(-50, 20, 141, dtype=F64), torch.logspace(1.5, 4, 20, dtype=F64)])
    w = lambert_w_exp(y)
    close(w + torch.log(w), y, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(lambert_w_exp(y.float())).all()
    assert lambert_w_exp(torch.tensor([1.0], dtype=F64)).item() == pytest.approx(1.0, abs=1e-14)
    yg = y.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(log_lambert_w_exp(yg).sum(), yg)
    close(g, 1 / (1 + w))  # d log W(e^y) / dy = 1 / (1 + W)


# --------------------------------------------------------------------------- custom
def custom(plugins, formula, **params):
    return make(plugins, "custom", {"formula": formula, **params})


@pytest.mark.parametrize(("formula", "name"), [("u*log(u)", "kl"), ("-log(u)", "reverse_kl"),
                                               ("(sqrt(u) - 1)**2", "hellinger")])
def test_custom_formula_reproduces_builtin(plugins, formula, name):
    c, d = custom(plugins, formula), make(plugins, name)
    assert c.describe()["formula"] == formula and c.name == "custom"
    s = torch.linspace(-8, 8, 33, dtype=F64, requires_grad=True)
    close(c.T(s), d.T(s))
    close(c.C(s), d.C(s), rtol=1e-8, atol=1e-8)
    (g1,) = torch.autograd.grad(c.C(s).sum(), s)
    (g2,) = torch.autograd.grad(d.C(s).sum(), s)
    close(g1, g2)  # differentiable in s, as the density critic needs
    t = d.activation(torch.linspace(-8, 8, 33, dtype=F64))
    close(c.conjugate(t), d.conjugate(t), rtol=1e-7, atol=1e-9)
    close(c.inverse_f_prime_log(d.T(s.detach())), s.detach(), rtol=1e-7, atol=1e-7)
    assert c.range_f_prime[0] == pytest.approx(d.range_f_prime[0], abs=1e-6)
    assert c.range_f_prime[1] == pytest.approx(d.range_f_prime[1], abs=1e-6)


def test_custom_gan_needs_its_offset_and_tv_is_free_critic_only(plugins):
    gan = "u*log(u) - (u+1)*log(u+1)"
    with pytest.raises(FGMError) as e:
        custom(plugins, gan)
    assert "f(1)" in e.value.message and "offset" in e.value.hint
    g = custom(plugins, gan, offset=-math.log(4), name="my_gan")
    assert g.name == "my_gan" and g.f_prime_at_1 == pytest.approx(-math.log(2))
    assert g.conjugate(torch.tensor([0.5], dtype=F64)).item() == math.inf  # beyond sup f' = 0
    tv = custom(plugins, "abs(u - 1)/2")
    assert not tv.strictly_convex and not tv.supports_density
    assert tv.range_f_prime == (-0.5, 0.5)


@pytest.mark.parametrize(("formula", "needle"), [
    ("-u*log(u)", "convex"), ("u*log(u) + 1", "f(1)"), ("log(u - 1)", "nan"),
    ("u - 1", "linear"), ("0*u", "linear"), ("1/(u-1)", "inf"),
])
def test_custom_rejects_invalid_generators(plugins, formula, needle):
    with pytest.raises(FGMError) as e:
        custom(plugins, formula)
    assert needle in e.value.message


def test_custom_convexity_message_says_where(plugins):
    with pytest.raises(FGMError) as e:
        custom(plugins, "-u*log(u)")
    assert "f is not convex on (0, inf): f' decreases between u =" in e.value.message


@pytest.mark.parametrize("formula", [
    "__import__('os')", "u.__class__", "open('x')", "[u for u in u]", "lambda: 1", "u[0]",
    "'text'", "x*log(x)", "log(u, base=2)", "getattr(u, 'exp')", "(lambda: 1)()", "u if u else 1",
    "u ^ 2", "u < 1", "True", "{u}", "f'{u}'", "log(*u)", "1j*u",
])
def test_formula_rejects_anything_outside_the_whitelist(plugins, formula):
    with pytest.raises(FGMError) as e:
        custom(plugins, formula)
    assert "allowed" in (e.value.hint or "")


def test_formula_is_never_executed(plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for formula in ["open('pwned', 'w')", "__import__('os').system('touch pwned2')",
                    "exec(\"open('pwned3','w')\")", "eval('1')"]:
        with pytest.raises(FGMError):
            custom(plugins, formula)
    assert list(tmp_path.iterdir()) == []


def test_formula_parser_covers_the_whitelist():
    from fgm_divergences import parse_formula

    u = torch.tensor([0.5, 2.0], dtype=F64)
    f = parse_formula("log(u) + exp(-u) - sqrt(u)*abs(u-1) + log1p(u) - expm1(u)/pi + e"
                      " + softplus(u) * sigmoid(u) - tanh(+u) / 2**3")
    expect = (torch.log(u) + torch.exp(-u) - torch.sqrt(u) * torch.abs(u - 1) + torch.log1p(u)
              - torch.expm1(u) / math.pi + math.e + torch.nn.functional.softplus(u) * torch.sigmoid(u)
              - torch.tanh(u) / 8)
    close(f(u), expect)
    assert parse_formula("2")(u).shape == u.shape
    assert parse_formula("9**9**9")(u).isinf().all()  # tensors, never a huge integer
    with pytest.raises(FGMError, match="characters"):
        parse_formula("u+" * 300 + "u")
    with pytest.raises(FGMError, match="nested|deep"):
        parse_formula("-" * 200 + "u")
    with pytest.raises(FGMError, match="one argument"):
        parse_formula("log(u, u)")
    with pytest.raises(FGMError, match="not a valid expression"):
        parse_formula("u*(")
