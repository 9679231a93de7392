"""``images``: a folder of PNG/JPEG files, optionally one subfolder per class."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from fgm_core.components import DataBundle, DataRequest
from fgm_core.errors import FGMError

from .common import IMAGE_SCALING, Options, check_request, make_bundle, parse_options, split_indices

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class ImagesOptions(Options):
    path: str = Field(description="folder of images, or of one subfolder per class")
    size: int = Field(32, ge=4, le=1024, description="output side length (square)")
    channels: Literal[1, 3] = 3
    fit: Literal["crop", "stretch"] = Field(
        "crop", description="crop: centre-crop to square then resize; stretch: resize directly"
    )


def _read_bytes(path: Path) -> bytes:
    """Read one file (a seam for tests): a regular file of bounded size."""
    from fgm_core.storage import MAX_DATA_BYTES, read_input

    return read_input(path, "image file", MAX_DATA_BYTES)


def _scan(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (hidden files skipped), sorted."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except PermissionError:
        raise FGMError(
            f"dataset 'images': cannot list {directory} (permission denied)", "fix its permissions"
        ) from None
    return [
        Path(e.path)
        for e in entries
        if not e.name.startswith(".") and e.is_file() and Path(e.name).suffix.lower() in EXTENSIONS
    ]


def _subdirs(directory: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except PermissionError:
        raise FGMError(
            f"dataset 'images': cannot list {directory} (permission denied)", "fix its permissions"
        ) from None


def load_image(path: Path, size: int, channels: int, fit: str) -> np.ndarray:
    """Decode, convert and resize one image to (channels, size, size) uint8."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - pillow ships with matplotlib
        raise FGMError("dataset 'images' needs Pillow to decode images", "pip install pillow") from None
    try:
        data = _read_bytes(path)
    except PermissionError:
        raise FGMError(
            f"dataset 'images': cannot read {path} (permission denied)", "fix its permissions or remove it"
        ) from None
    except OSError as e:
        raise FGMError(f"dataset 'images': cannot read {path}: {e.strerror or e}", "check the file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no raw warning lines; PIL's own notes are not errors
            # between 1x and 2x its pixel limit PIL only warns: refuse those images too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                im = im.convert("L" if channels == 1 else "RGB")
                if fit == "crop" and im.width != im.height:
                    s = min(im.width, im.height)
                    left, top = (im.width - s) // 2, (im.height - s) // 2
                    im = im.crop((left, top, left + s, top + s))
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise FGMError(
            f"dataset 'images': {path} has more than {Image.MAX_IMAGE_PIXELS} pixels, too many to "
            "decode safely (a decompression bomb?)",
            "shrink the image or remove it",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FGMError(
            f"dataset 'images': {path} is not a readable image ({type(e).__name__}: {e})", "delete or replace the file"
        ) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def images(request: DataRequest) -> DataBundle:
    """Images resized to (channels, size, size), pixels 0..255; labels from class subfolders."""
    check_request("images", request)
    opts = parse_options("images", ImagesOptions, request.options)
    root = Path(opts.path).expanduser()
    if not root.exists():
        raise FGMError(f"dataset 'images': folder {root} does not exist", "check data.options.path")
    if not root.is_dir():
        raise FGMError(f"dataset 'images': {root} is not a folder", "point data.options.path at a folder")
    top = _scan(root)
    classes = [(d.name, _scan(d)) for d in _subdirs(root)]
    classes = [(n, files) for n, files in classes if files]
    exts = "/".join(sorted(e.lstrip(".") for e in EXTENSIONS))
    if top and classes:
        raise FGMError(
            f"dataset 'images': {root} holds images both at top level ({top[0].name}, ...) and "
            f"in class subfolders ({classes[0][0]}/, ...)",
            "move the top-level images into a subfolder, or remove the subfolders",
        )
    if classes:
        files = [f for _, fs in classes for f in fs]
        labels = np.concatenate([np.full(len(fs), i, dtype=np.int64) for i, (_, fs) in enumerate(classes)])
        names: list[str] | None = [n for n, _ in classes]
    else:
        files, labels, names = top, None, None
    if not files:
        raise FGMError(
            f"dataset 'images': no images ({exts}) in {root} or its subfolders",
            "add images, one subfolder per class if labelled",
        )
    x = np.empty((len(files), opts.channels, opts.size, opts.size), dtype=np.uint8)
    for i, f in enumerate(files):
        x[i] = load_image(f, opts.size, opts.channels, opts.fit)
    tr, te = split_indices(len(files), request.test_fraction, request.seed, f"dataset 'images' ({root})")
    return make_bundle(
        "images",
        x[tr].astype(np.float32),
        x[te].astype(np.float32),
        "image",
        IMAGE_SCALING,
        train_labels=None if labels is None else labels[tr],
        test_labels=None if labels is None else labels[te],
        label_names=names,
        info={
            "path": str(root),
            "n_files": len(files),
            "size": opts.size,
            "channels": opts.channels,
            "fit": opts.fit,
            "classes": names,
            "seed": request.seed,
        },
    )


def _peek(options: dict) -> tuple[str, tuple[int, int, int]]:
    """Image data of (channels, size, size), known from the options alone."""
    opts = parse_options("images", ImagesOptions, options)
    return "image", (opts.channels, opts.size, opts.size)


images.peek = _peek  # type: ignore[attr-defined]
