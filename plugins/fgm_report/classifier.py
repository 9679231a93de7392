"""A small image classifier trained locally on a dataset's training split: the feature network
for image metrics (no Inception weights are available offline).

Deterministic (fixed seed, one thread while training), cached under ``$FGM_CACHE_DIR`` or
``~/.cache/fgm/classifiers/`` keyed by a hash of the dataset name, options, sizes and a data
fingerprint; weights are safetensors, metadata JSON (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fgm_core.errors import FGMError
from fgm_core.storage import load_tensors, read_json, save_tensors, write_json

VERSION = 1
MAX_TRAIN = 20_000
EPOCHS = 3
FEATURES = 64


def cache_dir() -> Path:
    root = os.environ.get("FGM_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "fgm"


class _Net(nn.Module):
    def __init__(self, channels: int, size: tuple[int, int], n_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        h, w = (size[0] + 3) // 4, (size[1] + 3) // 4
        self.feat = nn.Sequential(nn.Linear(32 * h * w, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.feat(self.body(x))
        return f, self.head(f)


class Classifier:
    """Predicts classes and penultimate features of data-unit images."""

    def __init__(
        self,
        net: _Net,
        shift: float,
        scale: float,
        n_classes: int,
        accuracy: float,
        cached: bool,
        path: Path | None = None,
    ) -> None:
        self.net = net.eval()
        self.shift, self.scale = shift, scale
        self.n_classes = n_classes
        self.accuracy = accuracy
        self.cached = cached
        self.path = path

    def _in(self, x: Tensor) -> Tensor:
        return ((torch.as_tensor(x).float() - self.shift) / self.scale).clamp(-1.5, 1.5)

    @torch.no_grad()
    def _run(self, x: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor]:
        fs, ls = [], []
        x = self._in(x)
        for i in range(0, x.shape[0], batch):
            f, lo = self.net(x[i : i + batch])
            fs.append(f)
            ls.append(lo)
        return torch.cat(fs), torch.cat(ls)

    def predict(self, x: Tensor) -> Tensor:
        return self._run(x)[1].argmax(1)

    def features(self, x: Tensor) -> Tensor:
        return self._run(x)[0]


def _key(bundle: Any, cfg: Any) -> str:
    tr = bundle.train
    fp = [
        float(tr.double().sum()),
        float(tr[0].double().sum()),
        float(tr[-1].double().sum()),
        float(bundle.train_labels.double().sum()),
    ]
    spec = {
        "version": VERSION,
        "dataset": bundle.name,
        "options": cfg.data.options if cfg is not None else None,
        "seed": cfg.run.seed if cfg is not None else None,
        "train": list(tr.shape),
        "test": list(bundle.test.shape),
        "fingerprint": [round(v, 3) for v in fp],
        "epochs": EPOCHS,
        "max_train": MAX_TRAIN,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def get_classifier(bundle: Any, cfg: Any = None, cache: bool = True) -> Classifier:
    """The cached classifier for ``bundle`` (train it on first use)."""
    if bundle.train_labels is None or bundle.test_labels is None:
        raise FGMError(f"dataset {bundle.name!r} has no labels", "the classifier metrics need labelled data")
    c, h, w = bundle.train.shape[1:]
    n_classes = int(max(int(bundle.train_labels.max()), int(bundle.test_labels.max())) + 1)
    n_classes = max(n_classes, len(bundle.label_names or []))
    shift, scale = bundle.scaling.shift, bundle.scaling.scale
    key = _key(bundle, cfg)
    d = cache_dir() / "classifiers"
    wpath, mpath = d / f"{key}.safetensors", d / f"{key}.json"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _Net(c, (h, w), n_classes)
    if cache and wpath.exists() and mpath.exists():
        try:
            meta = read_json(mpath)
            net.load_state_dict(load_tensors(wpath))
            return Classifier(net, shift, scale, n_classes, float(meta["accuracy"]), True, wpath)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is retrained
            pass
    clf = Classifier(_train(net, bundle, shift, scale), shift, scale, n_classes, 0.0, False, wpath)
    pred = clf.predict(bundle.test)
    clf.accuracy = float((pred == bundle.test_labels.long()).double().mean())
    if cache:
        save_tensors(
            wpath, {k: v.contiguous() for k, v in net.state_dict().items()}, metadata={"version": str(VERSION)}
        )
        write_json(
            mpath,
            {
                "accuracy": clf.accuracy,
                "dataset": bundle.name,
                "n_classes": n_classes,
                "train_points": min(MAX_TRAIN, bundle.train.shape[0]),
                "epochs": EPOCHS,
            },
        )
    return clf


def _train(net: _Net, bundle: Any, shift: float, scale: float) -> _Net:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit reproducible across machines with the same torch
    try:
        g = torch.Generator().manual_seed(0)
        n = min(MAX_TRAIN, bundle.train.shape[0])
        sel = torch.randperm(bundle.train.shape[0], generator=g)[:n]
        x = (bundle.train[sel].float() - shift) / scale
        y = bundle.train_labels[sel].long()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        net.train()
        for _ in range(EPOCHS):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, 128):
                b = perm[i : i + 128]
                _, logits = net(x[b])
                loss = nn.functional.cross_entropy(logits, y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.eval()
    finally:
        torch.set_num_threads(threads)
