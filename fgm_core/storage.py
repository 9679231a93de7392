"""Files on disk: atomic writes, safetensors for every tensor, JSON for everything else.

Nothing is ever unpickled. Nested state (optimizer state dicts, RNG states) is split into a
safetensors file of tensors and a JSON skeleton that refers to them by key. Run and export
folders are data: a file name read from one stays inside it (:func:`confined_file`), weights,
checkpoints and export files carry a recorded sha256 that is checked on load, and an export
directory is replaced only when it is exactly an fgm export (:func:`check_export_target`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fgm_core.errors import FGMError

FORMAT_VERSION = 2  # bump when run directories change incompatibly (2: sha256 of weights and checkpoints)


def confined_file(folder: Path, name: Any, source: Path | str) -> Path:
    """``folder / name`` for a file name read from a file (``source``) inside ``folder``.

    Files that come with a run or an export are data that anyone may have edited, so a name
    read from them is refused (one FGMError naming ``source``) unless it stays inside
    ``folder``: no absolute path, no ``..``, no symbolic link at any level below ``folder``,
    and the target, when it exists, is a regular file. ``folder`` itself was named by the
    user and may be a link.
    """
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise FGMError(f"{source} names the file {name!r}, which is not a plain relative file name",
                       "restore the file, or re-create the folder with fgm")
    parts = Path(name).parts
    if Path(name).is_absolute() or any(p in ("..", ".") for p in parts) or name != "/".join(parts):
        raise FGMError(f"{source} names the file {name!r}, outside {folder}",
                       "fgm reads only files inside the folder; restore the file, or re-create the folder with fgm")
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise FGMError(f"{path} is a symbolic link; fgm reads only plain files inside {folder}",
                           "replace the link by a copy of the file")
    if path.exists() and not path.is_file():
        raise FGMError(f"{path} is not a regular file", "restore it from the folder's original copy")
    return path


def refuse_links(folder: Path) -> None:
    """Refuse to write into ``folder`` (a run directory) while anything below it is a symbolic
    link: a link planted in a shared folder would redirect fgm's appends and plots elsewhere."""
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            if os.path.islink(os.path.join(root, n)):
                raise FGMError(f"{Path(root, n)} is a symbolic link; fgm writes only plain files inside {folder}",
                               "replace the link by a copy of the file, or remove it")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(path: Path, data: bytes, expected: str | None) -> bytes:
    """``data`` (read from ``path``) when its sha256 is ``expected``; ``None``: not checked."""
    if expected is not None and sha256_hex(data) != expected:
        raise FGMError(f"{path} does not match the sha256 recorded for it (corrupt, or changed or replaced "
                       "after fgm wrote it)", "restore the original file, or retrain / re-export")
    return data


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file;
    returns the sha256 of ``data`` (hex), for the records that verify it on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_hex(data)


def atomic_write_text(path: Path, text: str) -> str:
    return atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, sha256: str | None = None) -> Any:
    """Parse a JSON file; ``sha256``: refuse it unless its bytes have this hash."""
    path = Path(path)
    try:
        return json.loads(check_sha256(path, path.read_bytes(), sha256))
    except FileNotFoundError:
        raise FGMError(f"{path} not found", "is this an fgm run or export directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FGMError(f"{path} is corrupt (not valid JSON: {e})", "restore it or retrain") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns its sha256."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu", sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; ``sha256``: refuse it unless its bytes have this hash."""
    path = Path(path)
    try:
        data = check_sha256(path, path.read_bytes(), sha256)
    except FileNotFoundError:
        raise FGMError(f"weights file {path} not found", "the run directory is incomplete") from None
    try:
        out = st_load(data)
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure is corruption
        raise FGMError(f"{path} is corrupt or truncated ({e})", "resume from an earlier checkpoint or retrain") from None
    return {k: v.to(device) for k, v in out.items()}


def split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}`` and collect them."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), split_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def join_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unkey(k): join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [join_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def _key(k: Any) -> Any:
    return {"int": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["int"] if isinstance(k, dict) else k


# --------------------------------------------------------------------------- export directories
#: every export directory holds this manifest; ``exporter`` names its exporter plugin and
#: ``files`` maps every other file in the directory to its sha256 (written by :func:`seal_export`)
MANIFEST = "manifest.json"


def _entries(folder: Path) -> list[str]:
    """Relative names of everything below ``folder`` but directories (links to them included)."""
    out = []
    for root, dirs, files in os.walk(folder):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            out.append(Path(root, n).relative_to(folder).as_posix())
    return sorted(out)


def export_problem(folder: Path) -> str | None:
    """Why ``folder`` is not exactly an fgm export, or ``None`` when it is: its manifest lists
    every other file in it, each with the sha256 it still has."""
    manifest = Path(folder) / MANIFEST
    try:
        m = None if manifest.is_symlink() else json.loads(manifest.read_bytes())
    except (OSError, ValueError):
        m = None
    files = m.get("files") if isinstance(m, dict) else None
    if not isinstance(files, dict) or not isinstance(m.get("exporter"), str):
        return f"it has no fgm {MANIFEST}"
    extra = [n for n in _entries(folder) if n not in files and n != MANIFEST]
    if extra:
        return f"it holds files its {MANIFEST} does not list ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
    for name, sha in files.items():
        try:
            path = confined_file(folder, name, manifest)
            if sha256_hex(path.read_bytes()) != sha:
                return f"{name} was changed after fgm wrote it"
        except (FGMError, OSError):
            return f"{name}, listed in its {MANIFEST}, is missing or not a plain file"
    return None


def check_export_target(out: Path) -> None:
    """Refuse an export destination unless it is absent, empty, or exactly an fgm export:
    fgm never deletes or overwrites files it did not write."""
    if out.is_symlink():
        raise FGMError(f"export directory {out} is a symbolic link", "give the real directory, or another -o")
    if not out.exists():
        return
    if not out.is_dir():
        raise FGMError(f"{out} exists and is not a directory", "choose another -o directory")
    why = export_problem(out) if any(out.iterdir()) else None
    if why:
        raise FGMError(f"{out} exists and is not an fgm export: {why}",
                       "fgm replaces only a folder it wrote itself; choose another -o directory or move the files away")


def seal_export(folder: Path, manifest: dict[str, Any], exporter: str) -> dict[str, Any]:
    """Record the sha256 of every file an exporter wrote into ``folder`` in its manifest
    (the exporter's own ``manifest.json`` when it wrote one, else ``manifest``)."""
    path = folder / MANIFEST
    if path.exists():
        manifest = read_json(path)
        if not isinstance(manifest, dict):
            raise FGMError(f"exporter {exporter!r} wrote a {MANIFEST} that is not a JSON object",
                           "report it to the exporter plugin's author")
    files = {}
    for name in _entries(folder):
        if name != MANIFEST:
            files[name] = sha256_hex(confined_file(folder, name, f"exporter {exporter!r}").read_bytes())
    manifest = {**manifest, "exporter": manifest.get("exporter", exporter), "files": files}
    write_json(path, manifest)
    return manifest


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished directory ``new`` to ``out``, replacing what is there (checked by
    :func:`check_export_target` just before); the old one is removed only once ``new`` is in place."""
    check_export_target(out)
    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        new.rename(out)
    except BaseException:
        os.replace(old / out.name, out)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
