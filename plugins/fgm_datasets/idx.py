"""``idx``: MNIST-format IDX files (raw or gzip), e.g. Fashion-MNIST."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
from pydantic import Field

from fgm_core.components import DataBundle, DataRequest
from fgm_core.errors import FGMError
from fgm_core.storage import MAX_DATA_BYTES, read_input

from .common import IMAGE_SCALING, Options, check_request, make_bundle, parse_options

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# IDX type code -> big-endian numpy dtype
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxOptions(Options):
    path: str | None = Field(None, description="directory with the four IDX files")
    limit: int | None = Field(None, ge=1, description="use at most this many training images")
    test_limit: int | None = Field(None, ge=1, description="use at most this many test images")
    label_names: list[str] | None = None
    classes: list[int] | None = Field(
        None,
        min_length=1,
        description="train only on these class indices "
        "(the test split keeps every class: a model trained without some "
        "classes, evaluated on all)",
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (``.gz`` decompressed); FGMError naming the file on any defect."""
    try:
        raw = read_input(path, "IDX file", MAX_DATA_BYTES)
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except PermissionError:
        raise FGMError(f"IDX file {path} is not readable (permission denied)", "fix its permissions") from None
    except (OSError, EOFError, zlib.error) as e:
        raise FGMError(f"IDX file {path} cannot be read: {e}", "re-download or re-extract it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FGMError(
            f"{path} is not an IDX file (bad magic number)",
            "expected MNIST-format files (magic 0x00000801 / 0x00000803)",
        )
    code, ndim = raw[2], raw[3]
    if code not in DTYPES or ndim == 0:
        raise FGMError(
            f"{path} has an unsupported IDX header (type 0x{code:02x}, {ndim} dims)",
            "expected MNIST-format files (type 0x08, unsigned bytes)",
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise FGMError(f"IDX file {path} is truncated (header incomplete)", "re-download it")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(DTYPES[code])
    expected = head + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise FGMError(f"IDX file {path} is {what}: {len(raw)} bytes, header {dims} needs {expected}", "re-download it")
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)


def _find(directory: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def idx(request: DataRequest) -> DataBundle:
    """Train/test images and labels from four IDX files; pixels 0..255, shape (1, H, W)."""
    check_request("idx", request)
    opts = parse_options("idx", IdxOptions, request.options)
    default = opts.path is None
    directory = (DEFAULT_DIR if default else Path(opts.path)).expanduser()  # type: ignore[arg-type]
    names = ", ".join(f"{b}[.gz]" for b in FILES.values())
    install = "; for the default, `apt-get install dataset-fashion-mnist`" if default else ""
    if not directory.is_dir():
        raise FGMError(
            f"dataset 'idx': directory {directory} does not exist",
            f"set data.options.path to a directory holding {names}{install}",
        )
    paths = {k: _find(directory, b) for k, b in FILES.items()}
    missing = [FILES[k] for k, p in paths.items() if p is None]
    if missing:
        problem = (
            "has none of the IDX files"
            if len(missing) == len(FILES)
            else "lacks " + ", ".join(m + "[.gz]" for m in missing) + " of the IDX files"
        )
        raise FGMError(
            f"dataset 'idx': {directory} {problem} {names}", f"put the files there or set data.options.path{install}"
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1:
            raise FGMError(
                f"dataset 'idx': {paths[f'{split}_images']} must hold (N, H, W) images and "
                f"{paths[f'{split}_labels']} (N,) labels; got {x.shape} and {y.shape}",
                "check the files are MNIST-format images and labels",
            )
        if len(x) != len(y):
            raise FGMError(
                f"dataset 'idx': {len(x)} {split} images but {len(y)} labels",
                f"check {paths[f'{split}_images'].name} and {paths[f'{split}_labels'].name}",  # type: ignore[union-attr]
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise FGMError(
            f"dataset 'idx': train images are {arrays['train_images'].shape[1:]}, test images "
            f"{arrays['test_images'].shape[1:]}",
            "use matching train and t10k files",
        )
    n_tr = len(arrays["train_images"]) if opts.limit is None else min(opts.limit, len(arrays["train_images"]))
    n_te = len(arrays["test_images"]) if opts.test_limit is None else min(opts.test_limit, len(arrays["test_images"]))
    xtr = arrays["train_images"][:n_tr, None].astype(np.float32)
    xte = arrays["test_images"][:n_te, None].astype(np.float32)
    ytr = arrays["train_labels"][:n_tr].astype(np.int64)
    yte = arrays["test_labels"][:n_te].astype(np.int64)
    k = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    if opts.classes is not None:
        bad = [c for c in opts.classes if not 0 <= c < k]
        if bad:
            raise FGMError(
                f"dataset 'idx': option classes has {bad[0]}, outside 0..{k - 1}", f"the labels are 0..{k - 1}"
            )
        keep = np.isin(ytr, opts.classes)
        if not keep.any():
            raise FGMError("dataset 'idx': no training image has a class in option classes", "check classes")
        xtr, ytr = xtr[keep], ytr[keep]
    if min(ytr.min(initial=0), yte.min(initial=0)) < 0:
        raise FGMError(f"dataset 'idx': negative labels in {paths['train_labels']}", "labels must be 0..K-1")
    if opts.label_names is not None:
        if len(opts.label_names) < k:
            raise FGMError(
                f"dataset 'idx': option label_names has {len(opts.label_names)} names, labels go up to {k - 1}",
                f"give at least {k} names",
            )
        label_names = list(opts.label_names)
    elif "fashion" in str(directory.resolve()).lower() and k <= 10:
        label_names = list(FASHION_NAMES)
    else:
        label_names = [str(i) for i in range(k)]
    if arrays["train_images"].dtype != np.uint8:
        lo = min(float(xtr.min(initial=0)), float(xte.min(initial=0)))
        hi = max(float(xtr.max(initial=0)), float(xte.max(initial=0)))
        if lo < 0 or hi > 255:
            raise FGMError(
                f"dataset 'idx': pixel values span {lo}..{hi}, expected 0..255", "use unsigned-byte IDX images"
            )
    return make_bundle(
        "idx",
        xtr,
        xte,
        "image",
        IMAGE_SCALING,
        train_labels=ytr,
        test_labels=yte,
        label_names=label_names,
        info={
            "path": str(directory),
            "files": {k: str(p) for k, p in paths.items()},
            "full_train": len(arrays["train_images"]),
            "full_test": len(arrays["test_images"]),
        },
    )


def _peek(options: dict) -> tuple[str, tuple[int, int, int] | None]:
    """Images; (1, H, W) from the training images' IDX header when the file is there."""
    opts = parse_options("idx", IdxOptions, options)
    directory = (DEFAULT_DIR if opts.path is None else Path(opts.path)).expanduser()
    path = _find(directory, FILES["train_images"]) if directory.is_dir() else None
    if path is None:
        return "image", None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 16 or head[3] != 3:
        return "image", None
    h, w = (int(v) for v in np.frombuffer(head, dtype=">u4", count=2, offset=8))
    return "image", (1, h, w)


idx.peek = _peek  # type: ignore[attr-defined]
