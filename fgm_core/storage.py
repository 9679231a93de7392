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
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fgm_core.errors import FGMError
from fgm_core.version import __version__

FORMAT_VERSION = 2  # bump when run directories change incompatibly (2: sha256 of weights and checkpoints)

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
            raise FGMError(
                f"cannot read {what} {path}: it is {_size(st.st_size)}, more than the {_size(limit)} fgm reads",
                "check that this is the right file",
            )
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


def confined_file(folder: Path, name: Any, source: Path | str) -> Path:
    """``folder / name`` for a file name read from a file (``source``) inside ``folder``.

    Files that come with a run or an export are data that anyone may have edited, so a name
    read from them is refused (one FGMError naming ``source``) unless it stays inside
    ``folder``: no absolute path, no ``..``, no symbolic link at any level below ``folder``,
    and the target, when it exists, is a regular file. ``folder`` itself was named by the
    user and may be a link.
    """
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise FGMError(
            f"{source} names the file {name!r}, which is not a plain relative file name",
            "restore the file, or re-create the folder with fgm",
        )
    parts = Path(name).parts
    if Path(name).is_absolute() or any(p in ("..", ".") for p in parts) or name != "/".join(parts):
        raise FGMError(
            f"{source} names the file {name!r}, outside {folder}",
            "fgm reads only files inside the folder; restore the file, or re-create the folder with fgm",
        )
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise FGMError(
                f"{path} is a symbolic link; fgm reads only plain files inside {folder}",
                "replace the link by a copy of the file",
            )
    if path.exists() and not path.is_file():
        raise FGMError(f"{path} is not a regular file", "restore it from the folder's original copy")
    return path


def refuse_links(folder: Path) -> None:
    """Refuse to write into ``folder`` (a run directory) while anything below it is a symbolic
    link: a link planted in a shared folder would redirect fgm's appends and plots elsewhere."""
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            if os.path.islink(os.path.join(root, n)):
                raise FGMError(
                    f"{Path(root, n)} is a symbolic link; fgm writes only plain files inside {folder}",
                    "replace the link by a copy of the file, or remove it",
                )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(path: Path, data: bytes, expected: str | None) -> bytes:
    """``data`` (read from ``path``) when its sha256 is ``expected``; ``None``: not checked."""
    if expected is not None and sha256_hex(data) != expected:
        raise FGMError(
            f"{path} does not match the sha256 recorded for it (corrupt, or changed or replaced after fgm wrote it)",
            "restore the original file, or retrain / re-export",
        )
    return data


def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file;
    returns the sha256 of ``data`` (hex), for the records that verify it on load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp makes 0600; a plain open() honours the umask
        with naming(path), os.fdopen(fd, "wb") as f:  # a full disk names the file
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_hex(data)


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


def atomic_write_text(path: Path, text: str) -> str:
    with naming(path):
        return atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, sha256: str | None = None) -> Any:
    """Parse a JSON file; ``sha256``: refuse it unless its bytes have this hash."""
    path = Path(path)
    try:
        return json.loads(check_sha256(path, read_input(path, "JSON file", MAX_JSON_BYTES), sha256).decode())
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
        raise FGMError(
            f"{path} is damaged: {where + ': ' if where else ''}{err['msg']}",
            "restore the file from a copy of the run, or retrain",
        ) from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write a safetensors file atomically; returns its sha256."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with naming(path):
        return atomic_write_bytes(path, st_save(clean, metadata=metadata))


def load_tensors(path: Path, device: str | torch.device = "cpu", sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; ``sha256``: refuse it unless its bytes have this hash."""
    path = Path(path)
    try:
        data = check_sha256(path, read_input(path, "weights file", MAX_TENSOR_BYTES), sha256)
    except FileNotFoundError:
        raise FGMError(f"weights file {path} not found", "the run directory is incomplete") from None
    try:
        out = st_load(data)
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure is corruption
        raise FGMError(
            f"{path} is corrupt or truncated ({e})", "resume from an earlier checkpoint or retrain"
        ) from None
    return {k: v.to(device) for k, v in out.items()}


def split_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by ``{"__tensor__": key}`` and collect them."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), split_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {
            "__list__": [split_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
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
    if not isinstance(files, dict) or not isinstance(m.get("exporter"), str):  # type: ignore[union-attr]
        return f"it has no fgm {MANIFEST}"
    extra = [n for n in _entries(folder) if n not in files and n != MANIFEST]
    if extra:
        return (
            f"it holds files its {MANIFEST} does not list ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})"
        )
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
        raise FGMError(
            f"{out} exists and is not an fgm export: {why}",
            "fgm replaces only a folder it wrote itself; choose another -o directory or move the files away",
        )


def seal_export(folder: Path, manifest: dict[str, Any], exporter: str) -> dict[str, Any]:
    """Record the sha256 of every file an exporter wrote into ``folder`` in its manifest
    (the exporter's own ``manifest.json`` when it wrote one, else ``manifest``)."""
    path = folder / MANIFEST
    if path.exists():
        manifest = read_json(path)
        if not isinstance(manifest, dict):
            raise FGMError(
                f"exporter {exporter!r} wrote a {MANIFEST} that is not a JSON object",
                "report it to the exporter plugin's author",
            )
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


# --------------------------------------------------------------------------- run directories
LOCK_FILE = "lock"
#: What fgm itself writes into a run directory before its first checkpoint.
RUN_FILES = frozenset(
    {
        "fgm.json",
        "config.toml",
        "config.json",
        "plugins.json",
        "data.json",
        "metrics.jsonl",
        "resumes.jsonl",
        "tensorboard",
        "checkpoints",
        LOCK_FILE,
    }
)


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
        raise FGMError(
            f"run directory {run_dir} is being written by another fgm process (pid {holder})",
            "wait for it to end, or stop it (Ctrl-C or kill PID; it writes a checkpoint), then resume",
        ) from None
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


def remove_run_dir(run_dir: Path) -> None:
    """Delete a run directory that fgm wrote and nobody is writing now (``fgm compare``
    replaces its own earlier runs this way). Anything else is refused: fgm never deletes a
    folder it did not write, nor a run another process holds."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise FGMError(f"{run_dir} is in the way and is not a run directory", "move it away or choose another -o")
    try:
        kind = json.loads((run_dir / "fgm.json").read_bytes()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "run" and not never_checkpointed(run_dir):
        raise FGMError(f"{run_dir} is in the way and is not an fgm run directory", "move it away or choose another -o")
    lock = lock_run_dir(run_dir)  # refuses a run that another process is writing
    try:
        shutil.rmtree(run_dir)
    finally:
        if lock is not None:
            lock.close()


# ---------------------------------------------------------------- checkpoints and format versions
#: the files of one checkpoint, ``checkpoints/<tag>.<part>``; ``checkpoint.json`` records their sha256
CHECKPOINT_PARTS = ("model.safetensors", "state.safetensors", "state.json")


class CheckpointPointer(BaseModel):
    """``checkpoint.json``: the newest complete checkpoint of a run and the sha256 of its files."""

    model_config = ConfigDict(extra="allow")
    step: int = Field(ge=0)
    tag: str = Field(pattern=r"^step-[0-9]+$")
    format_version: int
    sha256: dict[str, str]


def read_pointer(run_dir: Path) -> CheckpointPointer:
    """The run's ``checkpoint.json`` (confined to the run), format version and fields validated."""
    path = run_dir / "checkpoint.json"
    raw = read_json(confined_file(run_dir, "checkpoint.json", run_dir))
    check_format(raw, path)
    return read_record(path, CheckpointPointer, raw)


def checkpoint_files(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """Path and recorded sha256 of each file of the checkpoint ``checkpoint.json`` points at,
    confined to the run directory (its tag is data: ``../x`` or a link is refused)."""
    where = run_dir / "checkpoint.json"
    ptr = read_pointer(run_dir)
    missing = [p for p in CHECKPOINT_PARTS if p not in ptr.sha256]
    if missing:
        raise FGMError(f"{where} lacks the sha256 of the checkpoint's {missing[0]}", "restore it, or retrain")
    return {p: (confined_file(run_dir, f"checkpoints/{ptr.tag}.{p}", where), ptr.sha256[p]) for p in CHECKPOINT_PARTS}


def check_format(meta: Any, where: Path) -> None:
    if not isinstance(meta, dict):
        raise FGMError(
            f"{where} is damaged: it holds a JSON {type(meta).__name__}, not an object",
            "restore the file from a copy of the run, or retrain",
        )
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise FGMError(
            f"{where} has format version {v}, this fgm ({__version__}) reads {FORMAT_VERSION}",
            "use the fgm version that wrote it, or retrain",
        )
