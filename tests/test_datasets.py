"""The built-in datasets plugin, exercised through the plugin registry."""

from __future__ import annotations

import gzip
import importlib
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fgm_core.components import DataBundle, DataRequest
from fgm_core.errors import FGMError
from fgm_core.plugins import PluginSet


@pytest.fixture
def load(monkeypatch):
    monkeypatch.setenv("FGM_PLUGINS", "datasets")
    ps = PluginSet()

    def _load(name: str, seed: int = 0, test_fraction: float = 0.1, **options) -> DataBundle:
        return ps.get("datasets", name).factory(DataRequest(options=options, seed=seed,
                                                             test_fraction=test_fraction))

    return _load


def check_bundle(b: DataBundle) -> None:
    for t in (b.train, b.test):
        assert t.dtype == torch.float32 and t.is_contiguous() and torch.isfinite(t).all()
    assert b.train.shape[1:] == b.test.shape[1:]
    for t, x in ((b.train_labels, b.train), (b.test_labels, b.test)):
        if t is not None:
            assert t.dtype == torch.int64 and t.shape == (len(x),)


def test_registry_lists_all(monkeypatch):
    monkeypatch.setenv("FGM_PLUGINS", "datasets")
    ps = PluginSet()
    assert set(ps.names("datasets")) == {"ring8", "grid25", "swissroll", "shapes", "idx", "images", "array"}
    assert not ps.failures


# --------------------------------------------------------------------------- mixtures
def test_ring8_protocol(load):
    b = load("ring8")
    check_bundle(b)
    assert b.kind == "vector" and b.shape == (2,) and len(b.train) == 100_000 and len(b.test) == 10_000
    assert b.scaling.shift == 0 and b.scaling.scale == 1
    k = torch.arange(8, dtype=torch.float64)
    want = torch.stack([torch.cos(2 * math.pi * k / 8), torch.sin(2 * math.pi * k / 8)], 1).float()
    assert torch.allclose(b.mixture["means"], want, atol=1e-7)
    assert torch.cdist(want, want).add(torch.eye(8)).min() > 0.7  # 8 distinct modes
    assert torch.all(b.mixture["stds"] == 0.01) and torch.allclose(b.mixture["weights"], torch.full((8,), 0.125))
    nearest = torch.cdist(b.train, b.mixture["means"]).argmin(1)
    assert torch.equal(nearest, b.train_labels)
    resid = b.train - b.mixture["means"][b.train_labels]
    assert abs(resid.std().item() - 0.01) < 3e-4
    counts = torch.bincount(b.train_labels, minlength=8)
    assert counts.min() > 11_500 and counts.max() < 13_500


def test_mixture_deterministic_by_seed(load):
    a, b, c = load("ring8", n_train=500), load("ring8", n_train=500), load("ring8", n_train=500, seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:100], a.test[:100])


def test_grid25(load):
    b = load("grid25", n_train=20_000, n_test=100)
    check_bundle(b)
    means = b.mixture["means"]
    assert means.shape == (25, 2) and len({tuple(m.tolist()) for m in means}) == 25
    assert set(means.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert torch.all(b.mixture["stds"] == 0.05)
    assert torch.equal(torch.cdist(b.train, means).argmin(1), b.train_labels)
    assert len(torch.unique(b.train_labels)) == 25
    assert abs((b.train - means[b.train_labels]).std().item() - 0.05) < 2e-3


def test_modes_subset_keeps_full_mixture(load):
    b = load("ring8", n_train=2000, modes=[0, 1, 2])
    assert set(b.train_labels.tolist()) == {0, 1, 2} and set(b.test_labels.tolist()) <= {0, 1, 2}
    assert b.mixture["means"].shape == (8, 2) and b.info["kept_modes"] == [0, 1, 2]
    g = load("grid25", n_train=500, modes=[24], std=0.1)
    assert set(g.train_labels.tolist()) == {24} and torch.all(g.mixture["stds"] == 0.1)


def test_ring_radius_and_swissroll(load):
    b = load("ring8", n_train=100, radius=2.0)
    assert torch.allclose(b.mixture["means"].norm(dim=1), torch.full((8,), 2.0))
    s = load("swissroll", n_train=1000, n_test=10, noise=0.0)
    check_bundle(s)
    assert s.mixture is None and s.train_labels is None and s.shape == (2,)
    r = s.train.norm(dim=1)
    assert r.min() > 1.5 * math.pi / 5 - 1e-4 and r.max() < 4.5 * math.pi / 5 + 1e-4


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"n_trian": 10}, "unknown option 'n_trian'"),
        ({"std": -1}, "option std"),
        ({"n_train": "many"}, "option n_train"),
        ({"modes": [0, 8]}, "modes"),
        ({"modes": [1, 1]}, "modes"),
        ({"modes": []}, "modes"),
    ],
)
def test_mixture_bad_options(load, options, needle):
    with pytest.raises(FGMError) as e:
        load("ring8", **options)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if "unknown" in needle:
        assert "n_train=100000" in str(e.value)  # lists what is accepted


# --------------------------------------------------------------------------- shapes
def test_shapes(load):
    b = load("shapes", n_train=800, n_test=80)
    check_bundle(b)
    assert b.kind == "image" and b.shape == (1, 28, 28)
    assert b.scaling.shift == 127.5 and b.scaling.scale == 127.5
    assert len(b.label_names) == 8 and "circle-small" in b.label_names
    assert torch.bincount(b.train_labels, minlength=8).tolist() == [100] * 8
    assert b.train.min() >= 0 and b.train.max() <= 255 and b.train.max() > 100
    assert (b.train.flatten(1).max(1).values > 0).all()  # no blank images
    # large shapes cover more pixels than small ones of the same kind
    ink = (b.train > 0).flatten(1).sum(1).float()
    for k in range(4):
        assert ink[b.train_labels == 2 * k + 1].mean() > 1.5 * ink[b.train_labels == 2 * k].mean()
    assert torch.equal(b.train, load("shapes", n_train=800, n_test=80).train)
    c = load("shapes", n_train=16, n_test=8, size=32, channels=3)
    assert c.shape == (3, 32, 32)
    with pytest.raises(FGMError, match="option size"):
        load("shapes", size=30)


# --------------------------------------------------------------------------- idx
def write_idx(path: Path, arr: np.ndarray, gz: bool = False, truncate: int = 0) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.tobytes()
    if truncate:
        data = data[:-truncate]
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(d: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    xtr = g.integers(0, 256, (n_train, 28, 28))
    xte = g.integers(0, 256, (n_test, 28, 28))
    write_idx(d / "train-images-idx3-ubyte", xtr, gz)
    write_idx(d / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    write_idx(d / "t10k-images-idx3-ubyte", xte, gz)
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz)
    return xtr, xte


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads(load, tmp_path, gz):
    xtr, xte = make_idx_dir(tmp_path / "d", gz)
    b = load("idx", path=str(tmp_path / "d"))
    check_bundle(b)
    assert b.shape == (1, 28, 28) and len(b.train) == 12 and len(b.test) == 5 and b.kind == "image"
    assert torch.equal(b.train[:, 0], torch.from_numpy(xtr).float())
    assert torch.equal(b.test[:, 0], torch.from_numpy(xte).float())
    assert b.train_labels.tolist() == [i % 10 for i in range(12)]
    assert b.label_names == [str(i) for i in range(10)] and b.scaling.scale == 127.5
    assert len(load("idx", path=str(tmp_path / "d"), limit=4).train) == 4


def test_idx_fashion_names(load, tmp_path):
    make_idx_dir(tmp_path / "fashion-mnist", True)
    b = load("idx", path=str(tmp_path / "fashion-mnist"))
    assert b.label_names[0] == "T-shirt/top" and b.label_names[9] == "Ankle boot"


def test_idx_truncated(load, tmp_path):
    make_idx_dir(tmp_path / "d", True)
    bad = write_idx(tmp_path / "d" / "train-images-idx3-ubyte", np.zeros((12, 28, 28)), True, truncate=10)
    with pytest.raises(FGMError, match="truncated") as e:
        load("idx", path=str(tmp_path / "d"))
    assert str(bad) in str(e.value)


def test_idx_bad_magic_and_corrupt_gzip(load, tmp_path):
    make_idx_dir(tmp_path / "d", False)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(b"hello world")
    with pytest.raises(FGMError, match="t10k-labels-idx1-ubyte.*not an IDX file"):
        load("idx", path=str(tmp_path / "d"))
    make_idx_dir(tmp_path / "e", True)
    (tmp_path / "e" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(FGMError, match="t10k-labels-idx1-ubyte.gz"):
        load("idx", path=str(tmp_path / "e"))


def test_idx_missing_files(load, tmp_path):
    make_idx_dir(tmp_path / "d", False)
    (tmp_path / "d" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FGMError) as e:
        load("idx", path=str(tmp_path / "d"))
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "d") in msg and "train-labels-idx1-ubyte" in msg
    with pytest.raises(FGMError, match="does not exist"):
        load("idx", path=str(tmp_path / "nowhere"))


def test_idx_default_dir(load, monkeypatch, tmp_path):
    idx_mod = importlib.import_module("fgm_datasets.idx")  # the package's `idx` is the factory
    monkeypatch.setattr(idx_mod, "DEFAULT_DIR", tmp_path / "fashion-mnist")
    with pytest.raises(FGMError, match="apt-get install dataset-fashion-mnist"):
        load("idx")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_idx_real_fashion_mnist(load):
    b = load("idx", limit=1000)
    assert b.shape == (1, 28, 28) and len(b.train) == 1000 and len(b.test) == 10_000
    assert b.label_names[9] == "Ankle boot" and b.info["full_train"] == 60_000


# --------------------------------------------------------------------------- images
def write_png(path: Path, w: int, h: int, mode: str = "RGB", value: int = 200) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), value if mode == "L" else (value, 10, 50)).save(path)


def test_images_with_classes(load, tmp_path):
    for i in range(5):
        write_png(tmp_path / "cats" / f"c{i}.png", 40 + i, 30)
        write_png(tmp_path / "dogs" / f"d{i}.png", 20, 64, mode="L", value=100)
    write_png(tmp_path / "dogs" / "big.jpg", 50, 50)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    b = load("images", path=str(tmp_path), size=16, test_fraction=0.25)
    check_bundle(b)
    assert b.kind == "image" and b.shape == (3, 16, 16)
    assert len(b.train) + len(b.test) == 11 and len(b.test) == 3
    assert b.label_names == ["cats", "dogs"]
    labels = torch.cat([b.train_labels, b.test_labels])
    assert torch.bincount(labels).tolist() == [5, 6]
    cats = b.train[b.train_labels == 0]
    assert torch.allclose(cats[:, 0], torch.full_like(cats[:, 0], 200.0), atol=1)  # RGB kept
    g = load("images", path=str(tmp_path), size=8, channels=1, fit="stretch")
    assert g.shape == (1, 8, 8) and g.train.max() <= 255
    again = load("images", path=str(tmp_path), size=16, test_fraction=0.25)
    assert torch.equal(again.train, b.train) and torch.equal(again.test_labels, b.test_labels)


def test_images_flat_folder(load, tmp_path):
    for i in range(4):
        write_png(tmp_path / f"{i}.png", 10, 10)
    b = load("images", path=str(tmp_path))
    assert b.shape == (3, 32, 32) and b.train_labels is None and len(b.train) + len(b.test) == 4


def test_images_errors(load, tmp_path, monkeypatch):
    with pytest.raises(FGMError, match="does not exist"):
        load("images", path=str(tmp_path / "missing"))
    with pytest.raises(FGMError, match="no images"):
        load("images", path=str(tmp_path))
    with pytest.raises(FGMError, match="option 'path' is required"):
        load("images")
    write_png(tmp_path / "a" / "ok.png", 8, 8)
    write_png(tmp_path / "a" / "ok2.png", 8, 8)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(FGMError, match="broken.png is not a readable image"):
        load("images", path=str(tmp_path))

    images_mod = importlib.import_module("fgm_datasets.images")
    (tmp_path / "a" / "broken.png").unlink()

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images_mod, "_read_bytes", denied)
    with pytest.raises(FGMError, match="permission denied"):
        load("images", path=str(tmp_path))


# --------------------------------------------------------------------------- array
def test_array_npy_vectors(load, tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    b = load("array", path=str(tmp_path / "x.npy"), test_fraction=0.2)
    check_bundle(b)
    assert b.kind == "vector" and b.shape == (3,) and len(b.train) == 40 and len(b.test) == 10
    assert b.scaling.shift == 0 and b.scaling.scale == 1
    both = torch.cat([b.train, b.test])
    assert torch.equal(both.sort(0).values, torch.from_numpy(x).sort(0).values)
    s = load("array", path=str(tmp_path / "x.npy"), scale="standardize")
    assert s.scaling.scale > 0.5 and s.scaling.to_model(s.train).std(unbiased=False).item() == pytest.approx(1, abs=1e-3)


def test_array_npz_images_and_labels(load, tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8)).astype(np.uint8)
    y = np.array(["a", "b"] * 10)
    np.savez(tmp_path / "d.npz", images=x, y=y)
    b = load("array", path=str(tmp_path / "d.npz"), labels_key="y")
    check_bundle(b)
    assert b.kind == "image" and b.shape == (3, 8, 8) and b.scaling.shift == 127.5
    assert b.label_names == ["a", "b"] and b.train_labels is not None
    np.savez(tmp_path / "g.npz", first=np.random.default_rng(1).random((10, 6, 6)), other=np.zeros(3))
    g = load("array", path=str(tmp_path / "g.npz"))
    assert g.shape == (1, 6, 6) and g.scaling.shift == 0.5 and g.scaling.scale == 0.5
    with pytest.raises(FGMError, match="'nope' is not in the archive.*first, other"):
        load("array", path=str(tmp_path / "g.npz"), key="nope")


def test_array_csv(load, tmp_path):
    (tmp_path / "h.csv").write_text("x,y,label\n1,2,cat\n3,4,dog\n5,6.5,cat\n7,8,dog\n")
    b = load("array", path=str(tmp_path / "h.csv"), label_column=-1, test_fraction=0.25)
    check_bundle(b)
    assert b.shape == (2,) and b.label_names == ["cat", "dog"] and b.info["source"] == "header"
    assert sorted(torch.cat([b.train, b.test])[:, 1].tolist()) == [2, 4, 6.5, 8]
    (tmp_path / "n.csv").write_text("0.5 1\n2 3\n4 5\n")
    n = load("array", path=str(tmp_path / "n.csv"))
    assert n.shape == (2,) and n.info["source"] == "no header"
    (tmp_path / "img.csv").write_text("\n".join(",".join(["10"] * 16) for _ in range(4)))
    m = load("array", path=str(tmp_path / "img.csv"), shape=[1, 4, 4])
    assert m.kind == "image" and m.shape == (1, 4, 4)
    (tmp_path / "bad.csv").write_text("1,2\n3,x\n")
    with pytest.raises(FGMError, match="bad.csv: line 2, column 2: 'x' is not a number"):
        load("array", path=str(tmp_path / "bad.csv"))
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n\n3\n")
    with pytest.raises(FGMError, match="line 4 has 1 columns, expected 2"):
        load("array", path=str(tmp_path / "ragged.csv"))


def test_array_errors(load, tmp_path):
    p = tmp_path
    with pytest.raises(FGMError, match="does not exist"):
        load("array", path=str(p / "none.npy"))
    x = np.ones((5, 2))
    x[3, 1] = np.nan
    x[4, 0] = np.inf
    np.save(p / "nan.npy", x)
    with pytest.raises(FGMError, match=r"2 non-finite value\(s\) \(1 NaN, 1 inf\).*index \(3, 1\)"):
        load("array", path=str(p / "nan.npy"))
    np.save(p / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(FGMError, match="pickled"):
        load("array", path=str(p / "obj.npy"))
    np.savez(p / "obj.npz", x=np.ones((3, 2)), y=np.array([None, 1, 2], dtype=object))
    with pytest.raises(FGMError, match="array 'y' holds pickled"):
        load("array", path=str(p / "obj.npz"), labels_key="y")
    np.save(p / "huge.npy", np.full((4, 2), 1e39))
    with pytest.raises(FGMError, match="overflow float32"):
        load("array", path=str(p / "huge.npy"))
    np.save(p / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(FGMError, match="empty"):
        load("array", path=str(p / "empty.npy"))
    (p / "zero.npy").write_bytes(b"")
    with pytest.raises(FGMError, match="empty"):
        load("array", path=str(p / "zero.npy"))
    (p / "zero.csv").write_text("\n\n")
    with pytest.raises(FGMError, match="empty"):
        load("array", path=str(p / "zero.csv"))
    np.save(p / "vec.npy", np.arange(5.0))
    with pytest.raises(FGMError, match=r"shape \(5,\)"):
        load("array", path=str(p / "vec.npy"))
    np.save(p / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(FGMError, match="non-numeric dtype"):
        load("array", path=str(p / "str.npy"))
    np.save(p / "ok.npy", np.ones((4, 2)))
    with pytest.raises(FGMError, match="option kind"):
        load("array", path=str(p / "ok.npy"), kind="matrix")
    with pytest.raises(FGMError, match="needs \\(N, H, W\\)"):
        load("array", path=str(p / "ok.npy"), kind="image")
    (p / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(FGMError, match="unsupported file type .parquet"):
        load("array", path=str(p / "x.parquet"))
