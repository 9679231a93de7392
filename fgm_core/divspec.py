"""Divergence specs: a divergence named together with its parameters, in one string.

The one parser for every place a divergence is named (``fgm train -d``, ``fgm compare
--divergences``, ``divergence.name`` in a config file or ``--set``)::

    kl                          no parameters
    alpha:0.5                   the divergence's main parameter (alpha for alpha, formula for custom)
    custom:(u-1)**2/(u+1)       a formula (quotes optional: custom:"(u-1)**2/(u+1)")
    alpha:alpha=2               named parameters, several joined by ';'
    custom:formula=u*log(u);offset=0

Values are read as TOML scalars (``0.5``, ``2``, ``"text"``), else taken as text. A list of
specs is split at commas outside quotes and parentheses. :func:`label` writes a spec back in
this form (for report rows); :func:`slug` turns it into a file-system-safe run name part.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from fgm_core.config import parse_value
from fgm_core.errors import FGMError

SAFE = re.compile(r"[A-Za-z0-9._+-]")


@dataclass(frozen=True)
class DivergenceSpec:
    """A divergence name and its parameters (``main`` given by the shorthand ``name:value``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    main: Any = None  # the shorthand's value, before it is assigned to the main parameter
    has_main: bool = False


def split_list(text: str) -> list[str]:
    """Split ``kl,alpha:0.5,custom:"(u-1)**2/(u+1)"`` at the commas outside quotes and brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    if quote or depth:
        raise FGMError(
            f"divergence list {text!r} has an unclosed {'quote' if quote else 'bracket'}",
            'write e.g. --divergences kl,alpha:0.5,custom:"(u-1)**2/(u+1)"',
        )
    return [p for p in parts if p]


def _value(text: str) -> Any:
    return parse_value(text.strip())


def parse(text: str) -> DivergenceSpec:
    """``name[:value | :key=value;key=value]`` -> :class:`DivergenceSpec` (see the module doc)."""
    name, sep, rest = text.strip().partition(":")
    name = name.strip()
    if not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise FGMError(
            f"divergence {text!r} has no valid name before ':'",
            "write name, name:value or name:key=value, e.g. alpha:0.5",
        )
    if not sep:
        return DivergenceSpec(name)
    rest = rest.strip()
    if not rest:
        raise FGMError(f"divergence {text!r} has nothing after ':'", "write e.g. alpha:0.5 or alpha:alpha=0.5")
    if not re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", rest):  # the shorthand name:value
        return DivergenceSpec(name, {}, _value(rest), True)
    params: dict[str, Any] = {}
    for item in rest.split(";"):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or not val.strip():
            raise FGMError(
                f"divergence {text!r}: {item.strip()!r} is not key=value",
                "join named parameters with ';', e.g. custom:formula=u*log(u);offset=0",
            )
        if key in params:
            raise FGMError(f"divergence {text!r} gives {key!r} twice", "give each parameter once")
        params[key] = _value(val)
    return DivergenceSpec(name, params)


def main_param(factory: Any) -> str | None:
    """The parameter a divergence factory takes from the shorthand ``name:value`` (its
    ``main_param`` attribute), or None."""
    p = getattr(factory, "main_param", None)
    return p if isinstance(p, str) and p else None


def resolve(text: str, params: dict[str, Any], plugins: Any) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` for ``divergence.name = text`` with ``divergence.params = params``:
    the spec's parameters join the table; the same key with two different values is an error."""
    spec = parse(text)
    own = dict(spec.params)
    if spec.has_main:
        comp = plugins.get("divergences", spec.name)
        key = main_param(comp.factory)
        if key is None:
            raise FGMError(
                f"divergence {spec.name!r} has no main parameter for the shorthand {text!r}",
                f"name the parameter: {spec.name}:key=value (see `fgm plugins`)",
            )
        own[key] = spec.main
    out = dict(params)
    for key, val in own.items():
        if key in out and out[key] != val:
            raise FGMError(
                f"divergence {text!r} sets {key} = {val!r} but divergence.params.{key} is {out[key]!r}",
                "give the parameter in one place",
            )
        out[key] = val
    return spec.name, out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v == int(v) and abs(v) < 1e15:
        return str(int(v)) if abs(v) >= 1 else format(v, "g")
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def label(name: str, params: dict[str, Any], main: str | None = None) -> str:
    """The spec string of ``(name, params)``: ``alpha:0.5``, ``custom:(u-1)**2/(u+1)``,
    ``custom:formula=u*log(u);offset=0``; ``name`` alone without parameters."""
    if not params:
        return name
    if len(params) == 1 and main is not None and main in params:
        return f"{name}:{_fmt(params[main])}"
    return f"{name}:" + ";".join(f"{k}={_fmt(v)}" for k, v in params.items())


def slug(text: str) -> str:
    """A file-system-safe form of a spec label for run names: ``alpha:0.5`` -> ``alpha-0.5``;
    characters outside ``[A-Za-z0-9._+-]`` become ``-`` (runs collapsed), and when any was
    replaced, a 6-hex hash of the label keeps two specs from sharing a name."""
    plain = text.replace(":", "-", 1)
    if all(SAFE.fullmatch(ch) for ch in plain):
        return plain[:100]
    out = re.sub(r"-{2,}", "-", "".join(ch if SAFE.fullmatch(ch) else "-" for ch in plain)).strip("-.")
    return f"{out[:60] or 'divergence'}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def config_label(cfg: Any, plugins: Any = None) -> str:
    """The spec label of a resolved configuration's divergence (main parameter from its plugin)."""
    main = None
    if plugins is not None and cfg.divergence.params:
        try:
            main = main_param(plugins.get("divergences", cfg.divergence.name).factory)
        except FGMError:
            main = None
    return label(cfg.divergence.name, dict(cfg.divergence.params), main)
