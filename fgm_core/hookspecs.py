"""Hook specifications of the ``fgm`` plugin system (pluggy, entry-point group ``fgm``).

A plugin is a module: an installed package declares ``NAME = "its_module"`` in the entry-point
group ``fgm`` (the value is a module, not ``module:function``), and marks its hook functions
with :data:`hookimpl` from this module. The full contract is in ``docs/plugins.md``.

Every component hook receives a ``register`` callback and, optionally, ``settings``: the
plugin's own table from ``plugins.toml`` (``[settings.<plugin>]``). An implementation may
declare only the arguments it uses. Hooks are called once per plugin, when the plugin set
is first loaded; a hook that raises is reported with the plugin's name and that plugin is
skipped (fatal under ``--strict-plugins``).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("fgm")
hookimpl = pluggy.HookimplMarker("fgm")


@hookspec
def register_divergences(register, settings: dict[str, Any]) -> None:
    """Register f-divergences: ``register(name, factory, description="")``.

    ``factory(max_exp=..., **params)`` returns a :class:`fgm_core.components.Divergence`;
    ``params`` come from the ``[divergence.params]`` table of the run configuration.
    """


@hookspec
def register_architectures(register, settings: dict[str, Any]) -> None:
    """Register network architectures: ``register(name, factory, description="")``.

    ``factory()`` returns a :class:`fgm_core.components.Architecture`, which declares the
    data kinds and critic forms it supports and builds the three networks.
    """


@hookspec
def register_priors(register, settings: dict[str, Any]) -> None:
    """Register latent priors p(z): ``register(name, factory, description="")``.

    ``factory(latent_dim, options)`` returns a :class:`fgm_core.components.Prior`; ``options``
    come from ``model.prior_options``. The name ``normal`` is the core's N(0, I) and is not
    looked up here.
    """


@hookspec
def register_datasets(register, settings: dict[str, Any]) -> None:
    """Register datasets: ``register(name, factory, description="")``.

    ``factory(request: DataRequest)`` returns a :class:`fgm_core.components.DataBundle`
    in the data's own units, with its :class:`Scaling` to model units.
    """


@hookspec
def register_exporters(register, settings: dict[str, Any]) -> None:
    """Register exporters: ``register(name, factory, description="")``.

    ``factory()`` returns a :class:`fgm_core.components.Exporter`: ``export(run, out_dir,
    **options)`` writes the files and returns the manifest; ``open(export_dir, device)``
    loads them for inference. ``fgm export --format NAME`` selects it.
    """


@hookspec
def register_commands(cli) -> None:
    """Add commands to the ``fgm`` click group ``cli`` (for example ``cli.add_command``)."""


@hookspec(firstresult=True)
def plugin_preset(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Configuration this plugin selects under ``fgm train --plugin NAME``.

    Return a partial run configuration (nested dict, same keys as the TOML file), applied
    over the defaults and under the user's config file and command-line overrides.
    Called only for the plugin named by ``--plugin``.
    """


@hookspec
def run_finished(run, bundle) -> dict[str, Any] | None:
    """Extra fields for ``summary.json`` when a training run finishes.

    ``run`` is the finished :class:`fgm_core.run.Run` (final weights loaded), ``bundle`` the
    :class:`fgm_core.components.DataBundle` it trained on. Return a flat dict (JSON values) that
    is merged into the summary, or None; a plugin may also write files into ``run.path``. Called
    on process 0 only; an exception is recorded in the summary as ``<plugin>_error`` and never
    loses the finished run. The built-in ``report`` plugin adds mixture metrics, the held-out
    likelihood and ``samples.png`` here.
    """


@hookspec(firstresult=True)
def write_samples(samples, model, path) -> Any:
    """Write ``samples`` (a numpy array in data units) of ``model`` to ``path`` in a format the
    core does not write itself (``fgm sample -o samples.png``); return the path written, or None
    when this plugin does not handle ``path``'s suffix. The ``report`` plugin writes PNG images.
    """
