"""fgm-plugin-example: a complete third-party ``fgm`` plugin.

It is found through the entry point ``example = "fgm_plugin_example"`` in the ``fgm`` group
(see pyproject.toml) and contributes, through the hooks of :mod:`fgm_core.hookspecs`:

- the divergence ``triangular`` (Le Cam's triangular discrimination),
- the architecture ``tiny_mlp`` (small MLPs for vector data, all three critic forms),
- the dataset ``spiral`` (2-D two-arm spiral, labelled by arm),
- a preset: ``fgm train --plugin example`` selects all three.

A hook implementation declares only the arguments it uses: ``register`` always,
``settings`` (this plugin's ``[settings.example]`` table of plugins.toml) when it needs it.
Hooks are called once, when fgm loads its plugins; a hook that raises is reported by name
and this plugin is skipped (fatal under ``--strict-plugins``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fgm_core.errors import FGMError
from fgm_core.hookspecs import hookimpl

from .architecture import TinyMLP
from .dataset import spiral
from .divergence import Triangular, make_triangular

__version__ = "0.1.0"

__all__ = ["TinyMLP", "Triangular", "__version__", "make_triangular", "spiral"]

#: keys accepted in ``[settings.example]`` of plugins.toml
SETTINGS = {"turns": 1.5}


@hookimpl
def register_divergences(register) -> None:
    """``register(name, factory, description)``; factory(max_exp=..., **params) -> Divergence."""
    register("triangular", make_triangular, "triangular discrimination (Le Cam), f(u) = (u-1)^2/(u+1)")


@hookimpl
def register_architectures(register) -> None:
    """``factory()`` -> Architecture; the class itself is a fine factory."""
    register("tiny_mlp", TinyMLP, "small MLP encoder/decoder/critic for vectors (options: hidden, depth)")


@hookimpl
def register_datasets(register, settings: dict[str, Any]) -> None:
    """``factory(request)`` -> DataBundle. Uses ``[settings.example] turns = ...``."""
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise FGMError(f"[settings.example] has unknown key {sorted(unknown)[0]!r}",
                       f"accepted: {', '.join(SETTINGS)}")
    turns = settings.get("turns", SETTINGS["turns"])
    if isinstance(turns, bool) or not isinstance(turns, (int, float)) or not turns > 0:
        raise FGMError(f"[settings.example] turns = {turns!r} is invalid", "turns must be a number > 0")
    register("spiral", partial(spiral, turns=float(turns)),
             "2-D two-arm spiral, labelled by arm (options: n_train, n_test, noise)")


@hookimpl
def plugin_preset() -> dict[str, Any]:
    """What ``fgm train --plugin example`` selects (under the user's config and --set)."""
    return {
        "data": {"dataset": "spiral"},
        "divergence": {"name": "triangular"},
        "model": {"architecture": "tiny_mlp"},
    }
