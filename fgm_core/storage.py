"""Files on disk: atomic writes, safetensors for every tensor, JSON for everything else.

Nothing is ever unpickled. Nested state (optimizer state dicts, RNG states) is split into a
safetensors file of tensors and a JSON skeleton that refers to them by key.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fgm_core.errors import FGMError

FORMAT_VERSION = 1  # bump when run directories change incompatibly

#: Size bounds of the files fgm reads, checked before reading: a file larger than this is
#: refused instead of filling memory (JSON files fgm writes are kilobytes; weights and data
#: sets of this size would not fit in the memory of any machine fgm targets anyway).
MAX_JSON_BYTES = 256 << 20
MAX_TENSOR_BYTES = 64 << 30
MAX_DATA_BYTES = 64 << 30


def _size(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"


def read_input(path: Path, what: str, limit: int) -> bytes:
    """The bytes of an input file, checked first: it must be a regular file (a FIFO, device
    or socket is refused without blocking: ``/dev/zero`` would never end, a FIFO would hang)
    of at most ``limit`` bytes. The one rule for every file fgm reads; ``what`` names it in
    the error. Raises ``FileNotFoundError`` for a missing file (callers say what it means)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never blocks on a FIFO
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, device or socket)"
            raise FGMError(f"cannot read {what} {path}: it is {kind}", "give a regular file")
        if st.st_size > limit:
            raise FGMError(f"cannot read {what} {path}: it is {_size(st.st_size)}, more than the {_size(limit)} "
                           "fgm reads", "check that this is the right file")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read(st.st_size)  # bounded even if the file grows meanwhile
    finally:
        if fd >= 0:
            os.close(fd)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Attach ``path`` to an ``OSError`` raised inside that names no file (disk full, ...)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with naming(path), os.fdopen(fd, "wb") as f:  # a full disk names the file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with naming(path):
        atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_input(path, "JSON file", MAX_JSON_BYTES).decode())
    except FileNotFoundError:
        raise FGMError(f"{path} not found", "is this an fgm run or export directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FGMError(f"{path} is corrupt (not valid JSON: {e})", "restore it or retrain") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with naming(path):
        atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        data = read_input(path, "weights file", MAX_TENSOR_BYTES)
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


# --------------------------------------------------------------------------- run directories
LOCK_FILE = "lock"
#: What fgm itself writes into a run directory before its first checkpoint.
RUN_FILES = frozenset({"fgm.json", "config.toml", "config.json", "plugins.json", "data.json", "metrics.jsonl",
                       "resumes.jsonl", "tensorboard", "checkpoints", LOCK_FILE})


class RunLock:
    """An exclusive ``flock`` on ``RUN/lock``, held while a process writes the run. The kernel
    releases it when the process ends, however it ends, so a killed run never blocks the next."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_run_dir(run_dir: Path) -> RunLock | None:
    """Lock ``run_dir`` for writing, or fail with one line naming the holder. None where the
    platform has no ``flock`` (Windows): there runs are not locked."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FGMError(f"run directory {run_dir} is being written by another fgm process (pid {holder})",
                       "wait for it to end, or stop it (Ctrl-C or kill PID; it writes a checkpoint), then resume") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(fd)


def never_checkpointed(run_dir: Path) -> bool:
    """True for a directory holding only what an fgm run writes before its first checkpoint
    (a start interrupted by a signal, a kill or a full disk), or nothing: safe to replace."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.is_symlink() or (run_dir / "checkpoint.json").exists():
        return False
    for p in run_dir.iterdir():
        tmp = p.name.startswith(".") and p.name.endswith(".tmp")  # an atomic write cut short
        if p.name not in RUN_FILES and not tmp:
            return False
        if p.name == "checkpoints" and any(not q.name.startswith(("step-", ".step-")) for q in p.iterdir()):
            return False
    return True


def append_line(path: Path, line: str) -> None:
    """Append one line in a single write, flushed to disk."""
    with naming(path), open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_rows(path: Path, upto: int) -> None:
    """Keep the rows of a JSON-lines log with ``step <= upto``: rows a resumed run writes again
    and a partial last line (a process killed mid-write) go, so rows never repeat or glue."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in read_input(path, "metrics log", MAX_DATA_BYTES).decode(errors="replace").split("\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # empty, or cut short
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto:
            keep.append(line + "\n")
    atomic_write_text(path, "".join(keep))
