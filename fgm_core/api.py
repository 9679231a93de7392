"""The Python API: train from a configuration, load a run, export it."""

from __future__ import annotations

import glob
import os
import socket
from pathlib import Path
from typing import Any

from fgm_core.config import (
    IMAGE_DEFAULTS,
    VECTOR_DEFAULTS,
    DataConfig,
    FGMConfig,
    deep_merge,
    kind_defaults,
    merge_layers,
    validate,
)
from fgm_core.divspec import resolve
from fgm_core.errors import PLUGIN_FAILURES, FGMError, PluginError, unknown_name
from fgm_core.plugins import PluginSet, get_plugins, split_presets
from fgm_core.run import Run
from fgm_core.storage import (
    MANIFEST,
    check_export_target,
    check_format,
    confined_file,
    read_json,
    replace_dir,
    seal_export,
    umask_mode,
)
from fgm_core.trainer import Trainer


def resolve_config(
    config: FGMConfig | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
    presets: list[str] | None = None,
    plugins: PluginSet | None = None,
) -> tuple[FGMConfig, PluginSet]:
    """Merge defaults, plugin presets, a config (object, dict or TOML path) and overrides."""
    names, local = split_presets(presets)
    config_path = Path(config) if isinstance(config, (str, Path)) else None
    plugins = plugins or get_plugins(extra_local=local or None, near=config_path.parent if config_path else None)
    preset_dicts = [plugins.preset(n) for n in names]
    data = config.to_dict() if isinstance(config, FGMConfig) else config_path or config
    layers = merge_layers(data, overrides, preset_dicts)  # type: ignore[arg-type]  # a str config became config_path
    conv = IMAGE_DEFAULTS["model"]["architecture"] in plugins.components.get("architectures", {})
    mixture = VECTOR_DEFAULTS["model"]["prior"] in plugins.components.get("priors", {})
    defaults = kind_defaults(*_peek_data(layers, plugins), layers, conv_available=conv, mixture_available=mixture)
    cfg = validate(deep_merge(defaults, layers), str(config_path) if config_path else "config")
    if ":" in cfg.divergence.name:  # a divergence spec such as alpha:0.5 (fgm_core.divspec)
        name, params = resolve(cfg.divergence.name, cfg.divergence.params, plugins)
        cfg.divergence.name, cfg.divergence.params = name, params
    if names:
        cfg.plugins = list(dict.fromkeys(cfg.plugins + names))
    check_plugin_names(cfg.plugins, plugins)
    return cfg, plugins


def check_plugin_names(names: list[str], plugins: PluginSet) -> None:
    """Every plugin a configuration names (``plugins = [...]``, from --plugin, presets or a
    config file) must be loaded: a run's record never lists a plugin it did not have."""
    loaded = sorted(n for n, i in plugins.infos.items() if not i.error)
    unknown = list(dict.fromkeys(n for n in names if n not in loaded))
    if len(unknown) == 1:
        raise unknown_name("plugin", unknown[0], loaded)
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:3])
        raise FGMError(
            f"the configuration names {len(unknown)} plugins that are not loaded ({shown}, ...)",
            f"loaded: {', '.join(loaded) or 'none'}; fix the plugins list, see `fgm plugins`",
        )


def _peek_data(layers: dict[str, Any], plugins: PluginSet) -> tuple[str | None, tuple[int, ...] | None]:
    """(kind, item shape) of the dataset the layers name, from its factory's optional ``peek``
    (see :data:`fgm_core.components.DatasetFactory`) without loading it; (None, None) when the
    dataset is unknown or does not say."""
    section = layers.get("data")
    section = section if isinstance(section, dict) else {}
    name = section.get("dataset", DataConfig.model_fields["dataset"].default)
    options = section.get("options") or {}
    try:
        factory = plugins.get("datasets", name).factory if isinstance(name, str) else None
    except FGMError:
        return None, None  # an unknown name is reported where the data loads
    peek = getattr(factory, "peek", None)
    if peek is None or not isinstance(options, dict):
        return None, None
    try:
        got = peek(dict(options))
        if not got:
            return None, None
        kind, shape = got
        return str(kind), tuple(int(s) for s in shape) if shape is not None else None
    except Exception:  # noqa: BLE001 - a guess only: loading the data reports the real problem
        return None, None


def train(
    config: FGMConfig | dict[str, Any] | str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    presets: list[str] | None = None,
    resume: str | Path | None = None,
    progress: bool | None = None,
    plugins: PluginSet | None = None,
) -> Run:
    """Train an f-GM model and return the loaded :class:`Run`.

    ``config`` is a :class:`FGMConfig`, a nested dict, or a TOML path; ``overrides`` are
    ``section.key=value`` strings; ``presets`` name plugins (or local module paths) whose
    preset applies; ``resume`` continues a stopped run directory bit for bit.
    """
    if resume is not None:
        resume = Path(resume)
        if not (resume / "config.json").exists():
            raise FGMError(
                f"cannot resume {resume}: no config.json there", "give a run directory that `fgm train` created"
            )
        check_format(read_json(resume / "fgm.json"), resume / "fgm.json")  # a run of another format version
        base = read_json(resume / "config.json")
        validate(base, str(resume / "config.json"))  # a damaged config.json is named as such
        cfg, plugins = resolve_config(base, overrides, None, plugins)
        trainer = Trainer(cfg, plugins, run_dir=resume, resume=True)
    else:
        cfg, plugins = resolve_config(config, overrides, presets, plugins)
        trainer = Trainer(cfg, plugins)
    path = trainer.fit(progress=progress)
    return Run(path, trainer.cfg, trainer.model.eval(), trainer.info, plugins.resolved())


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a trained run directory for sampling, encoding and scoring."""
    return Run.load(path, device=device)


def latest_run(out_dir: str | Path = "runs") -> Path:
    """The most recently updated run directory under ``out_dir``."""
    root = Path(out_dir)
    runs = [p for p in root.glob("*/checkpoint.json")] if root.is_dir() else []
    if not runs:
        raise FGMError(f"no trained runs under {root}/", "train one with `fgm train` or give RUN_DIR")
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def export(
    run: Run | str | Path, out_dir: str | Path | None = None, fmt: str = "onnx", **options: Any
) -> dict[str, Any]:
    """Export a run with the exporter plugin ``fmt``; returns the manifest.

    The export is written beside ``out_dir`` and moved into place when complete, with the
    sha256 of every file in its ``manifest.json``. An existing ``out_dir`` is replaced only
    when it is exactly an fgm export (see :func:`fgm_core.storage.check_export_target`).
    """
    import shutil
    import tempfile

    run = run if isinstance(run, Run) else Run.load(run)
    plugins = get_plugins()
    comp = plugins.get("exporters", fmt)
    exporter = comp.factory()
    out = Path(out_dir) if out_dir else run.path / f"export-{fmt}"
    check_export_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(umask_mode(0o777))  # the export folder gets a plain mkdir's mode, not 0700
        (tmp / PARTIAL_MARK).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        try:
            manifest = exporter.export(run, tmp, **options)
        except PLUGIN_FAILURES as e:
            if isinstance(e, FGMError) or (hasattr(e, "message") and hasattr(e, "hint")):
                raise  # the exporter's own user-facing error
            raise PluginError(
                f"exporter {fmt!r} (plugin {comp.plugin!r}) failed: {type(e).__name__}: "
                f"{' '.join(str(e).split())}; nothing was written to {out}",
                "fix or update the plugin, or report it to its author",
            ) from e
        (tmp / PARTIAL_MARK).unlink()
        manifest = seal_export(tmp, manifest, fmt)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


#: the file that marks ``.OUT.XXXX/`` as an export in progress: "PID HOST" of its writer
PARTIAL_MARK = ".fgm-partial-export"


def _remove_stale_partials(out: Path) -> None:
    """Remove what killed exports to ``out`` left: ``.OUT.XXXX/`` folders with fgm's mark
    whose writer (same host) is no longer running. Nothing else is touched."""
    import shutil

    for d in out.parent.glob(f".{glob.escape(out.name)}.*"):
        try:
            pid, host = (d / PARTIAL_MARK).read_text().split()
            if d.is_symlink() or host != socket.gethostname() or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue  # not an fgm partial export (or not readable): leave it alone
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, another user's
    return True


def open_export(path: str | Path, device: str = "auto", **options: Any) -> Any:
    """Open an export directory with the exporter that wrote it (see its manifest); ``options``
    go to its runtime (ONNX: ``threads``, ``spinning``, ``rows_per_call``, ``clip``)."""
    path = Path(path)
    manifest = read_json(confined_file(path, MANIFEST, path))
    fmt = manifest.get("exporter") if isinstance(manifest, dict) else None
    if not isinstance(fmt, str) or not fmt:
        raise FGMError(f"{path / 'manifest.json'} names no exporter", "is this an fgm export directory?")
    return get_plugins().get("exporters", fmt).factory().open(path, device=device, **options)
