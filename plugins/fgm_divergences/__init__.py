"""Built-in f-divergences plugin (entry point ``divergences``).

Registers the closed forms of docs/math.md section 2.2 (kl, reverse_kl, pearson, neyman,
hellinger, js, gan, total_variation, jeffrey, alpha) and ``custom``, a divergence defined by a
formula for f (section 6). Each factory is called as ``factory(max_exp=..., **params)``;
unknown or ill-typed params raise :class:`FGMError` naming the accepted ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fgm_core.components import Divergence
from fgm_core.errors import FGMError
from fgm_core.hookspecs import hookimpl

from .builtin import BUILTIN_CLASSES, ClosedForm, lambert_w_exp, log_lambert_w_exp
from .derived import DerivedDivergence, from_f
from .formula import parse_formula

__version__ = "0.1.0"

# accepted params and their defaults, per divergence
PARAMS: dict[str, dict[str, Any]] = {name: {} for name in BUILTIN_CLASSES}
PARAMS["alpha"] = {"alpha": 0.5}
PARAMS["custom"] = {"formula": None, "offset": 0.0, "name": None}

CUSTOM_DESCRIPTION = 'user-defined f from a formula in u: params formula = "u*log(u)", offset = f(1) (default 0), name'


def _check_params(name: str, params: dict[str, Any]) -> None:
    accepted = PARAMS[name]
    for key in params:
        if key not in accepted:
            ok = ", ".join(accepted) if accepted else "none"
            raise FGMError(
                f"divergence {name!r} has no parameter {key!r}", f"accepted parameters: {ok}; edit [divergence.params]"
            )


def _check_max_exp(max_exp: Any) -> float:
    if isinstance(max_exp, bool) or not isinstance(max_exp, (int, float)) or not (0 < max_exp < math.inf):
        raise FGMError(
            f"divergence.max_exp must be a positive finite number, got {max_exp!r}",
            "the default 40 keeps e^{2s} finite in float32",
        )
    return float(max_exp)


def _closed_factory(name: str) -> Callable[..., Divergence]:
    cls = BUILTIN_CLASSES[name]

    def factory(max_exp: float = 40.0, **params: Any) -> Divergence:
        _check_params(name, params)
        return cls(max_exp=_check_max_exp(max_exp), **params)

    factory.__name__ = f"make_{name}"
    factory.__doc__ = cls.__doc__
    factory.main_param = next(iter(PARAMS[name]), None)  # type: ignore[attr-defined]  # alpha:0.5
    return factory


def make_custom(max_exp: float = 40.0, **params: Any) -> DerivedDivergence:
    """The ``custom`` divergence: ``formula`` (f in ``u``), optional ``offset`` (allowed f(1),
    as -log 4 for gan) and ``name`` (recorded in runs; default ``"custom"``)."""
    _check_params("custom", params)
    formula = params.get("formula")
    if formula is None:
        raise FGMError(
            "divergence 'custom' needs the parameter formula", 'e.g. [divergence.params] formula = "u*log(u)"'
        )
    if not isinstance(formula, str):
        raise FGMError(
            f"divergence 'custom': formula must be a string, got {type(formula).__name__}", 'e.g. formula = "u*log(u)"'
        )
    offset = params.get("offset", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise FGMError(
            f"divergence 'custom': offset must be a finite number, got {offset!r}",
            "offset is the value of f(1), e.g. -1.3862943611198906 (-log 4)",
        )
    name = params.get("name") or "custom"
    if not isinstance(name, str):
        raise FGMError(f"divergence 'custom': name must be a string, got {name!r}", 'e.g. name = "my_kl"')
    f = parse_formula(formula)
    return from_f(f, name=name, offset=float(offset), max_exp=_check_max_exp(max_exp), formula=f.formula)  # type: ignore[attr-defined]


make_custom.main_param = "formula"  # type: ignore[attr-defined]  # custom:"(u-1)**2/(u+1)"


def builtin_divergences() -> dict[str, tuple[Callable[..., Divergence], str]]:
    """Every divergence this plugin registers: name -> (factory, description)."""
    out: dict[str, tuple[Callable[..., Divergence], str]] = {
        name: (_closed_factory(name), cls.description) for name, cls in BUILTIN_CLASSES.items()
    }
    out["custom"] = (make_custom, CUSTOM_DESCRIPTION)
    return out


@hookimpl
def register_divergences(register) -> None:
    """Register the built-in divergences and ``custom``."""
    for name, (factory, description) in builtin_divergences().items():
        register(name, factory, description)


__all__ = [
    "PARAMS",
    "ClosedForm",
    "DerivedDivergence",
    "builtin_divergences",
    "from_f",
    "lambert_w_exp",
    "log_lambert_w_exp",
    "make_custom",
    "parse_formula",
    "register_divergences",
]
