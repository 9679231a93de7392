"""A safe parser for user formulas f(u), e.g. ``"u*log(u)"`` (docs/math.md section 6).

The text is parsed with :func:`ast.parse` into a syntax tree, every node is checked against
a short whitelist, and the tree is turned into nested Python closures over torch operations.
User text is never handed to ``eval``/``exec`` or compiled to a code object, so a formula
can compute numbers and nothing else. Numbers become tensors before any arithmetic, so
``9**9**9`` gives ``inf`` instead of a huge integer computation.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fgm_core.errors import FGMError

MAX_LENGTH = 500
MAX_DEPTH = 100

FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "log": torch.log,
    "exp": torch.exp,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "log1p": torch.log1p,
    "expm1": torch.expm1,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
VARIABLE = "u"

_BINOPS: dict[type, Callable[[Tensor, Tensor], Tensor]] = {
    ast.Add: torch.add,
    ast.Sub: torch.sub,
    ast.Mult: torch.mul,
    ast.Div: torch.div,
    ast.Pow: torch.pow,
}
_BINOP_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}

ALLOWED = (
    f"allowed: the variable u, numbers, constants {', '.join(CONSTANTS)}, "
    f"operators + - * / ** and parentheses, functions {', '.join(FUNCTIONS)} (one argument each)"
)

Node = Callable[[Tensor], Tensor]


def _error(text: str, what: str) -> FGMError:
    return FGMError(f"formula {text!r}: {what} is not allowed", ALLOWED)


def _token(text: str, node: ast.AST) -> str:
    seg = ast.get_source_segment(text, node)
    return repr(seg) if seg else type(node).__name__


def parse_formula(text: str) -> Callable[[Tensor], Tensor]:
    """Parse ``text`` (an expression in ``u``) into ``f(u: Tensor) -> Tensor``, elementwise.

    Raises :class:`FGMError` naming the offending token for anything outside the whitelist
    (other names, attributes, subscripts, keywords, strings, comprehensions, lambdas, ...),
    for text longer than ``MAX_LENGTH`` characters and for nesting deeper than ``MAX_DEPTH``.
    """
    if not isinstance(text, str):
        raise FGMError(f"formula must be a string, got {type(text).__name__}", 'e.g. formula = "u*log(u)"')
    if not text.strip():
        raise FGMError("formula is empty", 'give f(u) as an expression in u, e.g. "u*log(u)"')
    if len(text) > MAX_LENGTH:
        raise FGMError(
            f"formula is {len(text)} characters long, over the limit of {MAX_LENGTH}", "simplify the expression"
        )
    if "\x00" in text:
        raise FGMError("formula contains a NUL character", "remove it")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise FGMError(
            f"formula {text!r} is not a valid expression: {e.msg}",
            'write f(u) with Python syntax, e.g. "u*log(u)"; powers use **',
        ) from None
    except (MemoryError, RecursionError, ValueError):
        raise FGMError(f"formula {text!r} is nested too deeply or malformed", "simplify the expression") from None
    src = text.strip()
    root = _build(tree.body, src, 1)

    def f(u: Tensor) -> Tensor:
        out = root(u)
        return out if out.shape == u.shape else torch.broadcast_to(out, u.shape)

    f.__doc__ = f"f(u) = {src}"
    f.formula = src  # type: ignore[attr-defined]
    return f


def _build(node: ast.AST, text: str, depth: int) -> Node:
    """Turn one checked AST node into a closure ``u -> Tensor``."""
    if depth > MAX_DEPTH:
        raise FGMError(f"formula {text!r} is nested more than {MAX_DEPTH} levels deep", "simplify the expression")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(text, f"the constant {_token(text, node)}")
        try:
            number = float(value)
        except OverflowError:
            raise FGMError(
                f"formula {text!r}: the number {_token(text, node)} is too large", "use a float of at most about 1e308"
            ) from None
        return lambda u: torch.as_tensor(number, dtype=u.dtype, device=u.device)
    if isinstance(node, ast.Name):
        if node.id == VARIABLE:
            return lambda u: u
        if node.id in CONSTANTS:
            number = CONSTANTS[node.id]
            return lambda u: torch.as_tensor(number, dtype=u.dtype, device=u.device)
        raise _error(text, f"the name {node.id!r}")
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, (ast.UAdd, ast.USub)):
            inner = _build(node.operand, text, depth + 1)
            if isinstance(node.op, ast.USub):
                return lambda u: torch.neg(inner(u))
            return inner
        raise _error(text, f"the operator in {_token(text, node)}")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            raise _error(text, f"the operator in {_token(text, node)}{hint}")
        left = _build(node.left, text, depth + 1)
        right = _build(node.right, text, depth + 1)
        return lambda u: op(left(u), right(u))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise _error(text, f"the call {_token(text, node.func)}")
        name = node.func.id
        if name not in FUNCTIONS:
            raise _error(text, f"the function {name!r}")
        if node.keywords:
            raise _error(text, f"a keyword argument in {name}()")
        if len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise FGMError(f"formula {text!r}: {name}() takes exactly one argument", ALLOWED)
        fn = FUNCTIONS[name]
        arg = _build(node.args[0], text, depth + 1)
        return lambda u: fn(arg(u))
    if isinstance(node, ast.Attribute):
        raise _error(text, f"attribute access {'.' + node.attr!r}")
    if isinstance(node, ast.Subscript):
        raise _error(text, f"the subscript {_token(text, node)}")
    if isinstance(node, ast.Compare):
        raise _error(text, f"the comparison {_token(text, node)}")
    kind = type(node).__name__
    raise _error(text, f"{_token(text, node)} ({kind})")


__all__ = ["ALLOWED", "CONSTANTS", "FUNCTIONS", "MAX_DEPTH", "MAX_LENGTH", "parse_formula"]
