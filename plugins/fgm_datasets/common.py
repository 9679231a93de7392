"""Shared helpers: option validation, deterministic splits, finite checks, bundle assembly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from fgm_core.components import DataBundle, DataKind, DataRequest, Scaling
from fgm_core.errors import FGMError

IMAGE_SCALING = Scaling(shift=127.5, scale=127.5)  # 0..255 data units -> [-1, 1]


class Options(BaseModel):
    """Base of every dataset's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


OptionsT = TypeVar("OptionsT", bound=Options)


def accepted(cls: type[Options]) -> str:
    """``name=default`` for every option of ``cls`` (for error hints)."""
    parts = []
    for name, f in cls.model_fields.items():
        parts.append(name if f.is_required() else f"{name}={f.default!r}")
    return ", ".join(parts)


def parse_options(dataset: str, cls: type[OptionsT], options: dict[str, Any] | None) -> OptionsT:
    """Validate ``options`` against ``cls``; the first problem becomes one FGMError line."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise FGMError(
            f"dataset {dataset!r}: data.options must be a table, got {type(options).__name__}",
            f"accepted options: {accepted(cls)}",
        )
    try:
        return cls.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "options"
        key = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            msg = f"dataset {dataset!r}: unknown option {key!r}"
        elif err["type"] == "missing":
            msg = f"dataset {dataset!r}: option {key!r} is required"
        else:
            msg = f"dataset {dataset!r}: option {loc} = {err.get('input')!r} is invalid: {err['msg']}"
        raise FGMError(msg, f"accepted options: {accepted(cls)}") from None


def check_request(dataset: str, request: DataRequest) -> None:
    """Reject a malformed request (seed must be an int, test_fraction in (0, 1))."""
    if not isinstance(request.seed, (int, np.integer)) or isinstance(request.seed, bool):
        raise FGMError(f"dataset {dataset!r}: seed must be an integer, got {request.seed!r}", "set seed = 0")
    tf = request.test_fraction
    if not isinstance(tf, (int, float)) or not 0.0 < float(tf) < 1.0:
        raise FGMError(f"dataset {dataset!r}: test_fraction must be in (0, 1), got {tf!r}", "e.g. test_fraction = 0.1")


def rng(seed: int, stream: int = 0) -> np.random.Generator:
    """An independent numpy Generator per (seed, stream); never the global RNG."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, stream])


def split_indices(n: int, test_fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train/test split of ``n`` items (at least one of each)."""
    if n < 2:
        raise FGMError(f"{what} has {n} item(s); at least 2 are needed for a train/test split", "add more data")
    n_test = min(n - 1, max(1, int(round(n * float(test_fraction)))))
    perm = rng(seed, 99).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def check_finite(x: np.ndarray | torch.Tensor, what: str) -> None:
    """FGMError saying how many values are NaN/inf and where the first one is."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n_nan = int(np.isnan(a).sum())
        raise FGMError(
            f"{what} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, {int(bad.sum()) - n_nan} inf); "
            f"first at index {first}",
            "remove or impute them before training",
        )


def as_labels(labels: np.ndarray | None) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def make_bundle(
    name: str,
    train: np.ndarray | torch.Tensor,
    test: np.ndarray | torch.Tensor,
    kind: DataKind,
    scaling: Scaling,
    *,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    label_names: list[str] | None = None,
    mixture: dict[str, torch.Tensor] | None = None,
    info: dict[str, Any] | None = None,
) -> DataBundle:
    """Assemble a bundle: float32 contiguous tensors, int64 labels, finite values checked."""
    tensors = []
    for part, x in (("train", train), ("test", test)):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
        t = t.to(torch.float32).contiguous()
        if t.shape[0] == 0:
            raise FGMError(f"dataset {name!r}: the {part} split is empty", "add data or change test_fraction")
        check_finite(t, f"dataset {name!r} ({part} split)")
        tensors.append(t)
    info = dict(info or {})
    info.setdefault("n_train", int(tensors[0].shape[0]))
    info.setdefault("n_test", int(tensors[1].shape[0]))
    return DataBundle(
        name=name,
        train=tensors[0],
        test=tensors[1],
        kind=kind,
        scaling=scaling,
        train_labels=as_labels(train_labels),
        test_labels=as_labels(test_labels),
        label_names=label_names,
        mixture=mixture,
        info=info,
    )


def existing_path(dataset: str, path: str | Path, what: str = "path") -> Path:
    """Resolve a user path (``~`` expanded); FGMError if it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FGMError(f"dataset {dataset!r}: {what} {str(p)!r} does not exist", f"check data.options.{what}")
    return p
