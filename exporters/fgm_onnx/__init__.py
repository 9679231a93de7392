"""``onnx``: the ONNX exporter plugin of fgm, and a runtime that needs no torch.

- ``fgm export [RUN_DIR] --onnx [-o OUT_DIR] [--opset N]`` (or ``fgm_core.export(run, out)``)
  writes one self-contained graph per role (``generator``, ``encoder``, ``density``,
  ``likelihood``) plus ``manifest.json``, after the ONNX checker and a parity check against
  PyTorch (see :mod:`fgm_onnx.export`).
- :mod:`fgm_onnx.runtime` loads such a directory with numpy and onnxruntime only:
  ``OnnxRuntimeModel(dir).sample(n)``, ``.encode(x)``, ``.log_likelihood(x)``,
  ``.log_density(x)``, in data units, like :class:`fgm_core.run.Run`.

This module imports neither torch nor fgm_core, so that ``import fgm_onnx.runtime`` works
where torch is not installed; the torch side (:mod:`fgm_onnx.plugin`) loads on first use.
"""

from __future__ import annotations

import sys
from typing import Any

__version__ = "0.1.0"


def _hookimpl_marker():
    core = sys.modules.get("fgm_core.hookspecs")
    if core is not None:  # the plugin manager loads us: fgm_core is already imported
        return core.hookimpl
    try:  # the same marker as fgm_core.hookspecs.hookimpl, without importing fgm_core (torch)
        import pluggy

        return pluggy.HookimplMarker("fgm")
    except ImportError:  # a torch-free install without pluggy only needs the runtime
        return lambda f: f


hookimpl = _hookimpl_marker()


@hookimpl
def register_exporters(register):
    from fgm_onnx.plugin import OnnxExporter

    register(
        "onnx",
        OnnxExporter,
        "ONNX graphs per role (generator, encoder, density, likelihood) with parity checks; "
        "runtime needs only numpy and onnxruntime (CUDA when present)",
    )


def __getattr__(name: str) -> Any:
    if name == "OnnxExporter":
        from fgm_onnx.plugin import OnnxExporter

        return OnnxExporter
    if name in ("OnnxRuntimeModel", "FGMRuntimeError", "RuntimeInputError", "open_export"):
        from fgm_onnx import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'fgm_onnx' has no attribute {name!r}")


__all__ = [
    "FGMRuntimeError",
    "OnnxExporter",
    "OnnxRuntimeModel",
    "RuntimeInputError",
    "open_export",
    "register_exporters",
]
