"""Built-in report plugin (entry point ``report``): evaluation, comparison reports, plots and tuning.

It shows the two hooks a plugin uses to add behaviour rather than components:

- ``register_commands(cli)`` adds ``fgm evaluate``, ``fgm plot``, ``fgm compare`` and ``fgm tune``;
- ``run_finished(run, bundle)`` adds the after-training fields of ``summary.json`` (mixture
  metrics, held-out likelihood) and writes ``samples.png``;
- ``write_samples(samples, model, path)`` lets ``fgm sample -o samples.png`` write images.

Without it (blocked by the plugin policy) the core still trains, samples to ``.npy``, encodes,
scores and exports; ``summary.json`` then holds only the core's fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgm_core.components import DataBundle
from fgm_core.hookspecs import hookimpl
from fgm_core.run import Run
from fgm_report.commands import COMMANDS
from fgm_report.plots import save_array_plot
from fgm_report.summary import quick_evaluation

__version__ = "0.1.0"


@hookimpl
def register_commands(cli: Any) -> None:
    for command in COMMANDS:
        cli.add_command(command)


@hookimpl
def run_finished(run: Run, bundle: DataBundle | None) -> dict[str, Any]:
    return quick_evaluation(run, bundle)


@hookimpl
def write_samples(samples: Any, model: Any, path: Path) -> Path | None:
    if Path(path).suffix != ".png":
        return None
    return Path(save_array_plot(samples, model, Path(path)))
