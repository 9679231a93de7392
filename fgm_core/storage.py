"""Files on disk: atomic writes, safetensors for every tensor, JSON for everything else.

Nothing is ever unpickled. Nested state (optimizer state dicts, RNG states) is split into a
safetensors file of tensors and a JSON skeleton that refers to them by key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fgm_core.errors import FGMError

FORMAT_VERSION = 1  # bump when run directories change incompatibly


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp makes 0600; a plain open() honours the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: the old file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return umask_mode(0o666)


def umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the umask: what ``open``/``mkdir``
    give, where ``mkstemp``/``mkdtemp`` give 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FGMError(f"{path} not found", "is this an fgm run or export directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FGMError(f"{path} is corrupt (not valid JSON: {e})", "restore it or retrain") from None


R = TypeVar("R", bound=BaseModel)


def read_record(path: Path, model: type[R], raw: Any = None) -> R:
    """A JSON file fgm wrote with a known shape (checkpoint pointer, checkpoint state): a
    list, a missing key or a wrong type is one error that names the file and the field.
    ``raw``: the file's already-read content."""
    path = Path(path)
    data = read_json(path) if raw is None else raw
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise FGMError(f"{path} is damaged: {where + ': ' if where else ''}{err['msg']}",
                       "restore the file from a copy of the run, or retrain") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        data = path.read_bytes()
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
