"""The :class:`~fgm_core.components.Exporter` registered as ``onnx`` (imports torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgm_core.components import Exporter
from fgm_core.errors import FGMError


class OnnxExporter(Exporter):
    """ONNX graphs per role, validated (checker + parity with PyTorch) before success.

    ``export(run, out_dir, opset=18, exporter="auto", roles=None, atol=None, rtol=None, clip=True)``
    (see :func:`fgm_onnx.export.export_run`). ``open(dir, device, threads=None, ...)``
    returns a :class:`fgm_onnx.runtime.OnnxRuntimeModel`.
    """

    name = "onnx"

    def export(self, run: Any, out_dir: Path, **options: Any) -> dict[str, Any]:
        from fgm_onnx.export import export_run

        allowed = {"opset", "exporter", "roles", "atol", "rtol", "clip"}
        unknown = set(options) - allowed
        if unknown:
            raise FGMError(
                f"unknown ONNX export option {sorted(unknown)[0]!r}", f"accepted: {', '.join(sorted(allowed))}"
            )
        return export_run(run, Path(out_dir), **options)

    def open(self, export_dir: Path, device: str = "auto", **options: Any) -> Any:
        from fgm_onnx.runtime import OnnxRuntimeModel

        return OnnxRuntimeModel(export_dir, device=device, **options)
