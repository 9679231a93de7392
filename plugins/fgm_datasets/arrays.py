"""``array``: a user's .npy / .npz / .csv file of vectors (N, D) or images (N, H, W) / (N, C, H, W)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from fgm_core.components import DataBundle, DataRequest, Scaling
from fgm_core.errors import FGMError
from fgm_core.storage import MAX_DATA_BYTES, read_input
from fgm_core.tables import CSV_SUFFIXES, NUMPY_READ_ERRORS, read_csv

from .common import Options, check_finite, check_request, make_bundle, parse_options, split_indices


class ArrayOptions(Options):
    path: str = Field(description=".npy, .npz or .csv file")
    key: str | None = Field(None, description=".npz: array name (default: the first)")
    labels_key: str | None = Field(None, description=".npz: name of a (N,) labels array")
    label_column: int | None = Field(None, description=".csv: index of a label column (may be < 0)")
    kind: Literal["auto", "vector", "image"] = "auto"
    shape: list[int] | None = Field(None, min_length=1, description="reshape each row to this shape")
    scale: Literal["auto", "none", "standardize", "minmax"] = "auto"


def _err(path: Path, problem: str, hint: str) -> FGMError:
    return FGMError(f"dataset 'array': {path}: {problem}", hint)


def _load_npy(path: Path, opts: ArrayOptions) -> tuple[np.ndarray, np.ndarray | None, str]:
    try:
        obj = np.load(io.BytesIO(read_input(path, "data file", MAX_DATA_BYTES)), allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _err(
                path,
                "holds pickled Python objects (object arrays or non-NumPy data), which are never loaded",
                "save a numeric array: np.save(path, x.astype(np.float32))",
            ) from None
        raise _err(path, f"is not a valid NumPy file ({e})", "write it with np.save / np.savez") from None
    except NUMPY_READ_ERRORS as e:
        if isinstance(e, PermissionError):
            raise _err(path, "permission denied", "fix its permissions") from None
        raise _err(
            path, f"is not a valid NumPy file ({type(e).__name__}: {e})", "write it with np.save / np.savez"
        ) from None
    if isinstance(obj, np.ndarray):
        if opts.key or opts.labels_key:
            raise _err(path, "options key/labels_key apply only to .npz files", "remove them")
        return obj, None, "data"
    with obj as npz:
        keys = list(npz.files)
        if not keys:
            raise _err(path, "the .npz archive holds no arrays", "save at least one array")
        key = opts.key or keys[0]
        for k, opt in ((key, "key"), (opts.labels_key, "labels_key")):
            if k is not None and k not in keys:
                raise _err(path, f"option {opt} = {k!r} is not in the archive", f"arrays in it: {', '.join(keys)}")
        data = _npz_array(path, npz, key)
        labels = _npz_array(path, npz, opts.labels_key) if opts.labels_key else None
    return data, labels, key


def _npz_array(path: Path, npz: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise _err(
                path, f"array {key!r} holds pickled Python objects, which are never loaded", "save numeric arrays only"
            ) from None
        raise _err(path, f"array {key!r} is damaged ({e})", "re-save the file") from None
    except NUMPY_READ_ERRORS as e:
        raise _err(path, f"array {key!r} is damaged ({e})", "re-save the file") from None


def _load_csv(path: Path, opts: ArrayOptions) -> tuple[np.ndarray, np.ndarray | None, str]:
    data, labels, header = read_csv(path, opts.label_column, prefix="dataset 'array': ")
    return data, labels, "header" if header else "no header"


def _labels(path: Path, labels: np.ndarray, n: int) -> tuple[np.ndarray, list[str]]:
    """Map any 1-D int/str labels to 0..K-1, with names."""
    if labels.ndim != 1 or len(labels) != n:
        raise _err(path, f"labels have shape {labels.shape}, expected ({n},)", "give one label per item")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise _err(path, "labels must be integers or strings", "store class indices as integers")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iuUSb":
        raise _err(path, f"labels have dtype {labels.dtype}", "store class indices as integers")
    if labels.dtype.kind in "US":  # CSV columns come back as text: use numbers when they all are
        try:
            as_num = labels.astype(np.float64)
            if np.all(as_num == np.round(as_num)):
                labels = as_num.astype(np.int64)
        except ValueError:
            pass
    uniq, inv = np.unique(labels, return_inverse=True)
    if labels.dtype.kind in "iu" and uniq.min() >= 0 and uniq.max() < 1000:
        k = int(uniq.max()) + 1  # small non-negative integers are class indices: keep them
        return labels.astype(np.int64), [str(i) for i in range(k)]
    return inv.astype(np.int64).reshape(-1), [str(u) for u in uniq]


def _scaling(x: np.ndarray, kind: str, mode: str, path: Path) -> tuple[Scaling, str]:
    if mode == "none" or (mode == "auto" and kind == "vector"):
        return Scaling(), "none"
    lo, hi = float(x.min()), float(x.max())
    if mode == "standardize":
        mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
        if std == 0:
            raise _err(path, "all values are equal, cannot standardize", "use scale = 'none'")
        return Scaling(shift=mean, scale=std), "standardize"
    if mode == "auto" and lo >= 0 and hi <= 1:
        return Scaling(shift=0.5, scale=0.5), "0..1 -> [-1, 1]"
    if mode == "auto" and lo >= 0 and hi <= 255:
        return Scaling(shift=127.5, scale=127.5), "0..255 -> [-1, 1]"
    if hi == lo:
        raise _err(path, "all values are equal, cannot rescale", "use scale = 'none'")
    return Scaling(shift=(hi + lo) / 2, scale=(hi - lo) / 2), "minmax -> [-1, 1]"


def _as_items(x: np.ndarray, opts: ArrayOptions, path: Path) -> tuple[np.ndarray, str, str]:
    """Reshape to (N, D) vectors or (N, C, H, W) images; returns (x, kind, layout)."""
    if x.ndim < 2 or x.ndim > 4:
        raise _err(
            path,
            f"has shape {x.shape}; expected (N, D) vectors, (N, H, W) or (N, C, H, W) images",
            "reshape it (a 1-D array of scalars is x.reshape(-1, 1))",
        )
    if opts.shape is not None:
        per = int(np.prod(x.shape[1:]))
        if int(np.prod(opts.shape)) != per or min(opts.shape) < 1:
            raise _err(
                path,
                f"option shape {opts.shape} does not hold {per} values per item",
                f"the item shape is {tuple(x.shape[1:])}",
            )
        x = x.reshape(len(x), *opts.shape)
    kind = opts.kind
    if kind == "auto":
        kind = "vector" if x.ndim == 2 else "image"
    if kind == "vector":
        return x.reshape(len(x), -1), "vector", "flattened" if x.ndim > 2 else "(N, D)"
    if x.ndim == 2:
        raise _err(
            path,
            f"kind 'image' needs (N, H, W) or (N, C, H, W) data, got {x.shape}",
            "set option shape, e.g. shape = [1, 28, 28]",
        )
    if x.ndim == 3:
        return x[:, None], "image", "(N, H, W)"
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "image", "(N, H, W, C) transposed"
    return x, "image", "(N, C, H, W)"


def array(request: DataRequest) -> DataBundle:
    """Vectors or images from a .npy/.npz/.csv file, split by test_fraction with the seed."""
    check_request("array", request)
    opts = parse_options("array", ArrayOptions, request.options)
    path = Path(opts.path).expanduser()
    if not path.exists():
        raise FGMError(f"dataset 'array': file {path} does not exist", "check data.options.path")
    if not path.is_file():
        raise FGMError(f"dataset 'array': {path} is not a file", "give a .npy, .npz or .csv file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        if opts.key or opts.labels_key:
            raise _err(path, "options key/labels_key apply only to .npz files", "use label_column for CSV")
        data, labels, source = _load_csv(path, opts)
    elif suffix in (".npy", ".npz"):
        if opts.label_column is not None:
            raise _err(path, "option label_column applies only to CSV files", "use labels_key with .npz")
        if path.stat().st_size == 0:
            raise _err(path, "is empty (0 bytes)", "write it with np.save / np.savez")
        data, labels, source = _load_npy(path, opts)
    else:
        raise _err(path, f"unsupported file type {suffix or '(none)'}", "use .npy, .npz or .csv")
    if data.dtype.kind not in "biuf":
        raise _err(path, f"array {source!r} has non-numeric dtype {data.dtype}", "store numbers (float32, uint8, ...)")
    if data.size == 0 or data.ndim == 0 or len(data) == 0:
        raise _err(path, f"array {source!r} is empty (shape {data.shape})", "give at least 2 items")
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            n_nan = int(np.isnan(data).sum())
            raise _err(
                path,
                f"has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, "
                f"{int(bad.sum()) - n_nan} inf); the first at index {first}",
                "remove or impute them",
            )
    x, kind, layout = _as_items(data, opts, path)
    names = None
    if labels is not None:
        labels, names = _labels(path, np.asarray(labels), len(x))
    if data.dtype.kind == "f" and data.dtype.itemsize > 4:
        big = float(np.abs(data).max())
        if big > float(np.finfo(np.float32).max):
            raise _err(path, f"values up to {big:.3g} overflow float32", "rescale the data")
    x = x.astype(np.float32)
    check_finite(x, f"dataset 'array' ({path}, after conversion to float32)")
    tr, te = split_indices(len(x), request.test_fraction, request.seed, f"dataset 'array' ({path})")
    scaling, rule = _scaling(x[tr], kind, opts.scale, path)
    return make_bundle(
        "array",
        x[tr],
        x[te],
        kind,  # type: ignore[arg-type]
        scaling,
        train_labels=None if labels is None else labels[tr],
        test_labels=None if labels is None else labels[te],
        label_names=names,
        info={
            "path": str(path),
            "source": source,
            "layout": layout,
            "scaling_rule": rule,
            "dtype": str(data.dtype),
            "n_total": len(x),
            "seed": request.seed,
        },
    )


def _header_shape(fh) -> tuple[int, ...]:
    """The array shape from a .npy header (the data is not read)."""
    major, _ = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return tuple(read(fh)[0])


def _peek(options: dict) -> tuple[str, tuple[int, ...] | None] | None:
    """Kind and item shape from the options and the .npy/.npz header, without reading the data."""
    opts = parse_options("array", ArrayOptions, options)
    path = Path(opts.path).expanduser()
    shape: tuple[int, ...] | None = None
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with open(path, "rb") as fh:
            shape = _header_shape(fh)
    elif suffix == ".npz":
        with zipfile.ZipFile(path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            key = opts.key or (names[0] if names else None)
            if key is None:
                return None
            with z.open(f"{key}.npy") as fh:
                shape = _header_shape(fh)
    item = tuple(opts.shape) if opts.shape is not None else (tuple(shape[1:]) if shape is not None else None)
    if opts.kind == "vector" or (opts.kind == "auto" and (item is None or len(item) < 2)):
        return "vector", None
    if item is not None and len(item) == 2:
        item = (1, *item)
    elif item is not None and len(item) == 3 and item[0] not in (1, 3) and item[2] in (1, 3, 4):
        item = (item[2], item[0], item[1])
    return "image", item


array.peek = _peek  # type: ignore[attr-defined]
