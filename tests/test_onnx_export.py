"""The ONNX exporter plugin (``fgm export --onnx``) and its torch-free runtime.

Small networks trained for a couple of steps: what is checked is the export (graphs,
metadata, manifest, checker, parity with PyTorch), the runtime (same numbers as the Run
for the same noise, in a process where torch cannot be imported), the CLI on export
directories, clear errors on bad input, and the Node.js example.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fgm_core as fgm
from fgm_core.cli import cli
from fgm_core.errors import FGMError

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from fgm_onnx import export as E  # noqa: E402
from fgm_onnx.runtime import FGMRuntimeError, OnnxRuntimeModel, RuntimeInputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLE = ROOT / "examples" / "node-sample"

RING = {"dataset": "ring8", "options": {"n_train": 512, "n_test": 64}}
SHAPES = {"dataset": "shapes", "options": {"n_train": 64, "n_test": 16}}
SMALL = {"mlp": {"hidden": 16, "depth": 1}, "dcgan": {"channels": 4, "z_hidden": 8},
         "wgan_arch": {"dim": 4, "z_hidden": 8}}

# name: (architecture, data, critic form, divergence, generator, extra config, roles)
# Every built-in architecture with every critic form it supports; the divergences vary so
# that several closed-form (f')^-1 paths end up in density graphs. The first case of each
# architecture and data exports every graph; the others export the graphs that depend on
# the critic form (density; generator too when it is deterministic), which keeps the file
# fast: the encoder, generator and likelihood graphs do not depend on the critic.
ALL = None
CASES = {
    "mlp-ring8-density": ("mlp", RING, "density", "kl", "gaussian", {}, ALL),
    "mlp-ring8-joint": ("mlp", RING, "joint", "gan", "gaussian", {}, ["density"]),
    "mlp-ring8-marginal": ("mlp", RING, "marginal", "js", "gaussian", {}, ["density"]),
    "mlp-shapes-density": ("mlp", SHAPES, "density", "hellinger", "gaussian", {}, ALL),
    "mlp-shapes-joint-det": ("mlp", SHAPES, "joint", "gan", "deterministic", {}, ["generator", "density"]),
    "mlp-shapes-marginal-tv": ("mlp", SHAPES, "marginal", "total_variation", "gaussian", {}, ["density"]),
    "dcgan-density": ("dcgan", SHAPES, "density", "kl", "gaussian", {}, ALL),
    "dcgan-joint-sn": ("dcgan", SHAPES, "joint", "js", "gaussian", {"spectral_norm": True}, ["density"]),
    "dcgan-marginal-det": ("dcgan", SHAPES, "marginal", "gan", "deterministic", {}, ["generator", "density"]),
    "wgan_arch-density": ("wgan_arch", SHAPES, "density", "reverse_kl", "gaussian", {}, ALL),
    "wgan_arch-joint": ("wgan_arch", SHAPES, "joint", "pearson", "gaussian", {"spectral_norm": True}, ["density"]),
    "wgan_arch-marginal": ("wgan_arch", SHAPES, "marginal", "kl", "gaussian", {"gradient_penalty": 1.0},
                           ["density"]),
}


def config(name: str, out_dir: Path) -> dict:
    arch, data, form, div, gen, extra, _ = CASES[name]
    return {
        "data": data,
        "model": {"architecture": arch, "latent_dim": 3, "generator": gen, "options": SMALL[arch], "sigma": 0.1},
        "divergence": {"name": div},
        "critic": {"form": form, **extra},
        "optim": {"batch_size": 32},
        "run": {"steps": 2, "out_dir": str(out_dir), "progress": False, "checkpoint_every": 2,
                "tensorboard": False, "eval_samples": 64, "name": name},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def runs(workdir):
    """Train each case once, on first use (each in its own runs directory)."""
    cache: dict[str, fgm.Run] = {}

    def get(name: str) -> fgm.Run:
        if name not in cache:
            cache[name] = fgm.train(config(name, workdir / "runs" / name), progress=False)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exports(workdir, runs):
    """Export each case once, on first use: (run, export dir, manifest)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            run = runs(name)
            out = workdir / "exports" / name
            roles = CASES[name][-1]
            cache[name] = (run, out, fgm.export(run, out, **({} if roles is None else {"roles": roles})))
        return cache[name]

    return get


def _data(run: fgm.Run, n: int, seed: int = 0) -> np.ndarray:
    """Data-unit rows drawn from the model itself."""
    return run.sample(n, seed=seed).numpy()


# --------------------------------------------------------------------------- the export matrix
@pytest.mark.parametrize("name", list(CASES))
def test_export_every_architecture_and_critic(name, exports):
    run, out, manifest = exports(name)
    model = run.model
    roles = [g["role"] for g in manifest["graphs"]]
    want = ["generator", "encoder", "density"] + (["likelihood"] if model.generator == "gaussian" else [])
    assert roles == (want if CASES[name][-1] is None else CASES[name][-1])
    assert manifest["exporter"] == "onnx" and manifest["format_version"] == E.FORMAT_VERSION == 2
    assert manifest["opset"] == E.DEFAULT_OPSET and manifest["export_seconds"] > 0
    assert manifest["critic"] == model.critic_form and manifest["generator"] == model.generator
    assert manifest["latent_dim"] == 3 and manifest["data_shape"] == list(run.info.shape)
    assert manifest["divergence"]["name"] == run.config.divergence.name
    assert {p["name"] for p in manifest["plugins"]} >= {"onnx", run.config.model.architecture}
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    # one self-contained file per graph, nothing else
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{r}.onnx" for r in roles] + ["manifest.json"])
    for g in manifest["graphs"]:
        assert set(g["max_abs_diff"]) == {o["name"] for o in g["outputs"]}
        for o in g["outputs"]:
            assert g["max_abs_diff"][o["name"]] <= E.ATOL + E.RTOL * 1e4
        proto = onnx.load(str(out / g["file"]), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["fgm.role"] == g["role"] and meta["fgm.critic"] == model.critic_form
        assert json.loads(meta["fgm.data_shape"]) == list(run.info.shape)
        assert json.loads(meta["fgm.scaling"]) == {"shift": run.info.scaling.shift, "scale": run.info.scaling.scale}
        assert json.loads(meta["fgm.config"]) == run.config.to_dict()
        assert int(meta["fgm.latent_dim"]) == 3 and int(meta["fgm.opset"]) == E.DEFAULT_OPSET
        assert json.loads(meta["fgm.divergence"])["name"] == run.config.divergence.name
        assert "fgm.plugins" in meta and "fgm.fgm_version" in meta
        # dynamic batch (and K) dimensions, exactly the declared names
        for decl, val in zip(g["inputs"] + g["outputs"], list(proto.graph.input) + list(proto.graph.output)):
            dims = [d.dim_param or d.dim_value for d in val.type.tensor_type.shape.dim]
            assert decl["name"] == val.name and dims == decl["shape"]
            assert decl["shape"][0] in ("batch", "k")
    _check_runtime_against_run(run, out)


def _check_runtime_against_run(run: fgm.Run, out: Path) -> None:
    """The runtime gives the Run's numbers for the same noise (in-process, CPU)."""
    rt = OnnxRuntimeModel(out, device="cpu")
    model, sc, shape, d = run.model, run.info.scaling, run.info.shape, 3
    log_det = sc.log_det(run.info.dims)
    g = torch.Generator().manual_seed(5)
    n, k = 9, 4
    z = torch.randn(n, d, generator=g)
    eps = torch.randn(n, *shape, generator=g)
    tol = {"rtol": 1e-4, "atol": 1e-5 * max(1.0, sc.scale)}
    with torch.no_grad():
        if "generator" not in rt.graphs:
            pass
        elif model.generator == "gaussian":
            expect = sc.to_data(model.generate(z, eps)).numpy()
            np.testing.assert_allclose(rt.sample(z=z.numpy(), eps=eps.numpy()), expect, **tol)
        else:
            expect = sc.to_data(model.generate(z, None)).numpy()
            np.testing.assert_allclose(rt.sample(z=z.numpy()), expect, **tol)
        x = _data(run, n, seed=1)
        if "encoder" in rt.graphs:
            mu, logvar = run.encode(x)
            got_mu, got_lv = rt.encode(x)
            np.testing.assert_allclose(got_mu, mu.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got_lv, logvar.numpy(), rtol=1e-4, atol=1e-5)
        xm = run.as_model_input(x)
        lat = torch.randn(k, n, d, generator=g)
        if "likelihood" in rt.graphs:
            ll = (model.log_likelihood(xm, lat) + log_det).numpy()
            np.testing.assert_allclose(rt.log_likelihood(x, eps=lat.numpy(), batch=4), ll, rtol=1e-4, atol=1e-4)
        elif model.generator == "deterministic":
            with pytest.raises(FGMRuntimeError, match="no likelihood graph"):
                rt.log_likelihood(x)
        has_density = model.critic_form == "density" or (
            model.generator == "gaussian" and model.divergence.strictly_convex)
        if has_density:
            ld = (model.log_density(xm, None if model.critic_form == "density" else lat) + log_det).numpy()
            np.testing.assert_allclose(rt.log_density(x, eps=lat.numpy(), batch=4), ld, rtol=1e-4, atol=1e-4)
        else:
            with pytest.raises(FGMRuntimeError, match="no log_density"):
                rt.log_density(x)
        if model.critic_form == "joint":
            v = model.critic(xm, z).numpy()
            np.testing.assert_allclose(rt.critic(x, z.numpy()), v, rtol=1e-4, atol=1e-5)
        elif model.critic_form == "marginal":
            np.testing.assert_allclose(rt.critic(x), model.critic(xm).numpy(), rtol=1e-4, atol=1e-5)
    assert rt.provider == "CPUExecutionProvider"


def test_export_leaves_the_run_untouched(exports):
    """Baking spectral normalisation for export must not change the run's own networks."""
    run, _, _ = exports("dcgan-joint-sn")
    from torch.nn.utils import parametrize

    assert any(parametrize.is_parametrized(m) for m in run.model.critic.modules())
    x = torch.from_numpy(_data(run, 2))
    run.log_density(x)  # still runs (the parametrized weight is intact)
    again = fgm.load_run(run.path)
    z = torch.randn(2, 3)
    xm = run.as_model_input(x)
    with torch.no_grad():
        torch.testing.assert_close(run.model.critic(xm, z), again.model.critic(xm, z))


def test_plain_vae_exports_no_density_graph(workdir):
    """critic.n_critic = 0 trains no density estimator: no density graph, and a clear error."""
    cfg = config("mlp-ring8-density", workdir / "runs" / "plain-vae")
    cfg["critic"]["n_critic"] = 0
    run = fgm.train(cfg, progress=False)
    out = workdir / "exports" / "plain-vae"
    manifest = fgm.export(run, out)
    assert [g["role"] for g in manifest["graphs"]] == ["generator", "encoder", "likelihood"]
    with pytest.raises(FGMError, match="no 'density' graph"):
        fgm.export(run, workdir / "exports" / "plain-vae-2", roles=["density"])
    rt = fgm.open_export(out)
    assert np.isfinite(rt.log_likelihood(_data(run, 3), k=2)).all()
    with pytest.raises(FGMRuntimeError, match="no log_density"):
        rt.log_density(_data(run, 3))


def test_parity_failure_is_an_error(runs, workdir, monkeypatch):
    run = runs("mlp-ring8-density")
    monkeypatch.setattr(E, "ATOL", -1.0)
    monkeypatch.setattr(E, "RTOL", 0.0)
    out = workdir / "bad-parity"
    with pytest.raises(FGMError, match=r"parity failed: encoder output 'mu'.*max \|diff\|"):
        fgm.export(run, out, roles=["encoder"])
    assert not out.exists()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".bad-parity")]


def test_export_options_are_checked(runs, workdir):
    run = runs("mlp-ring8-density")
    with pytest.raises(FGMError, match="opset 11"):
        fgm.export(run, workdir / "x1", opset=11)
    with pytest.raises(FGMError, match="unknown ONNX export option"):
        fgm.export(run, workdir / "x2", dpi=3)


# --------------------------------------------------------------------------- the CLI
def test_cli_export_latest_run_sample_encode_score(runs, workdir, tmp_path):
    run = runs("mlp-ring8-density")
    runner = CliRunner()
    out = tmp_path / "export"
    res = runner.invoke(cli, ["export", "--onnx", "--runs", str(run.path.parent), "-o", str(out), "--opset", "20"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"exported {run.path}" in res.output and "likelihood.onnx: parity max |diff|" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["opset"] == 20
    assert {o.domain or "": o.version for o in onnx.load(str(out / "generator.onnx")).opset_import}[""] == 20

    s = tmp_path / "s.npy"
    res = runner.invoke(cli, ["sample", str(out), "-n", "8", "-o", str(s), "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    samples = np.load(s)
    assert samples.shape == (8, 2) and np.isfinite(samples).all()
    np.testing.assert_allclose(samples, OnnxRuntimeModel(out).sample(8, seed=0))
    res = runner.invoke(cli, ["sample", str(out), "-n", "4", "--mean", "-o", str(s), "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    np.testing.assert_allclose(np.load(s), OnnxRuntimeModel(out).sample(4, seed=0, noise=False))

    data = tmp_path / "data.npy"
    x = _data(run, 5)
    np.save(data, x)
    res = runner.invoke(cli, ["encode", str(out), str(data), "-o", str(tmp_path / "mu.npy"), "-v", "--threads", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "onnxruntime: running on" in res.output  # --device auto -v says which provider it got
    np.testing.assert_allclose(np.load(tmp_path / "mu.npy"), run.encode(x)[0].numpy(), rtol=1e-4, atol=1e-5)

    res = runner.invoke(cli, ["score", str(out), str(data), "-k", "20", "--density", "-o", str(tmp_path / "sc.csv")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    scores = np.loadtxt(tmp_path / "sc.csv", delimiter=",", skiprows=1)
    assert scores.shape == (5, 2) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:, 1], run.log_density(x).numpy(), rtol=1e-4, atol=1e-4)
    # same K: close to the Run's estimate (different noise streams, a few nats at most)
    assert np.abs(scores[:, 0] - run.log_likelihood(x, k=20).numpy()).max() < 5.0


# --------------------------------------------------------------------------- torch-free runtime
TORCH_FREE = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None          # `import torch` now raises ImportError
    import numpy as np
    from fgm_onnx.runtime import OnnxRuntimeModel
    try:
        import torch  # noqa: F401
        raise SystemExit("torch was importable")
    except ImportError:
        pass
    export_dir, inputs, out = sys.argv[1:4]
    d = np.load(inputs)
    m = OnnxRuntimeModel(export_dir, device=sys.argv[4])
    mu, logvar = m.encode(d["x"])
    np.savez(out, sample=m.sample(z=d["z"], eps=d["eps"]), mu=mu, logvar=logvar,
             ll=m.log_likelihood(d["x"], eps=d["lat"]), ld=m.log_density(d["x"]),
             seeded=m.sample(6, seed=3))
    heavy = sorted({k.split(".")[0] for k in sys.modules if k.split(".")[0] in ("torch", "fgm_core", "onnx")
                    and sys.modules[k] is not None})
    print(json.dumps({"provider": m.provider, "message": m.device_message, "heavy": heavy}))
""")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_runtime_works_without_torch(device, exports, tmp_path):
    run, out, _ = exports("mlp-ring8-density")
    g = torch.Generator().manual_seed(9)
    x = _data(run, 7, seed=2)
    z, eps, lat = torch.randn(7, 3, generator=g), torch.randn(7, 2, generator=g), torch.randn(5, 7, 3, generator=g)
    np.savez(tmp_path / "in.npz", x=x, z=z.numpy(), eps=eps.numpy(), lat=lat.numpy())
    script = tmp_path / "torch_free.py"
    script.write_text(TORCH_FREE)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "exporters")}
    proc = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "in.npz"), str(tmp_path / "o.npz"),
                           device], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert report["provider"] in report["message"]
    if device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers() and \
            report["provider"] == "CPUExecutionProvider":
        assert "CUDA did not start" in report["message"]
    if device == "cpu":
        assert "[E:" not in proc.stderr  # no CUDA loading noise when the CPU is asked for
    got = np.load(tmp_path / "o.npz")
    sc = run.info.scaling
    with torch.no_grad():
        xm = run.as_model_input(x)
        tol = {"rtol": 1e-4, "atol": 1e-4}
        np.testing.assert_allclose(got["sample"], sc.to_data(run.model.generate(z, eps)).numpy(), **tol)
        np.testing.assert_allclose(got["mu"], run.encode(x)[0].numpy(), **tol)
        np.testing.assert_allclose(got["logvar"], run.encode(x)[1].numpy(), **tol)
        ll = run.model.log_likelihood(xm, lat) + sc.log_det(run.info.dims)
        np.testing.assert_allclose(got["ll"], ll.numpy(), **tol)
        np.testing.assert_allclose(got["ld"], run.log_density(x).numpy(), **tol)
    assert got["seeded"].shape == (6, 2) and np.isfinite(got["seeded"]).all()


# --------------------------------------------------------------------------- bad input
def test_runtime_rejects_bad_input(exports):
    _, out, _ = exports("mlp-ring8-density")
    rt = OnnxRuntimeModel(out, device="cpu")
    cases = [
        (lambda: rt.encode(np.zeros((4, 3), np.float32)), r"shape \(4, 3\).*expects \(N, 2\)"),
        (lambda: rt.encode(np.zeros((0, 2), np.float32)), "empty"),
        (lambda: rt.encode(np.array([["a", "b"]])), "dtype <U1"),
        (lambda: rt.encode(np.array([[0.0, 1.0], [np.nan, 0.0]])), r"NaN or inf.*row 1"),
        (lambda: rt.log_likelihood(np.array([[np.inf, 0.0]])), "NaN or inf"),
        (lambda: rt.log_likelihood(np.zeros((2, 2)), k=0), "k must be a positive integer"),
        (lambda: rt.log_likelihood(np.zeros((2, 2)), eps=np.zeros((3, 5, 3))), r"eps has shape \(3, 5, 3\)"),
        (lambda: rt.sample(0), "positive integer"),
        (lambda: rt.sample(z=np.zeros((2, 5))), r"z has shape \(2, 5\)"),
        (lambda: rt.sample(z=np.full((2, 3), np.nan)), "z has NaN"),
        (lambda: rt.sample(2, eps=np.zeros((3, 2))), r"eps has shape"),
    ]
    for call, pattern in cases:
        with pytest.raises(RuntimeInputError, match=pattern) as info:
            call()
        assert isinstance(info.value, ValueError) and info.value.hint and "\n" not in str(info.value)
    x = rt.encode([0.5, 0.5])[0]  # one row given as a flat vector is fine, as for a Run
    assert x.shape == (1, 3)


def test_runtime_rejects_what_is_not_an_fgm_export(exports, tmp_path, capsys):
    _, out, _ = exports("mlp-ring8-density")
    with pytest.raises(FGMRuntimeError, match="no manifest.json"):
        OnnxRuntimeModel(tmp_path)
    with pytest.raises(FGMRuntimeError, match="not found"):
        OnnxRuntimeModel(tmp_path / "missing")
    with pytest.raises(FGMRuntimeError, match="unknown device"):
        OnnxRuntimeModel(out, device="tpu")

    bad = tmp_path / "newer"
    shutil.copytree(out, bad)
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(FGMRuntimeError, match="format version 99"):
        OnnxRuntimeModel(bad)

    stripped = tmp_path / "stripped"
    shutil.copytree(out, stripped)
    proto = onnx.load(str(stripped / "encoder.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(stripped / "encoder.onnx"))
    (stripped / "generator.onnx").write_bytes(b"not a graph")
    with pytest.raises(FGMRuntimeError, match="encoder.onnx does not match the sha256"):
        OnnxRuntimeModel(stripped, device="cpu").encode(np.zeros((1, 2)))
    m = json.loads((stripped / "manifest.json").read_text())  # past the sha256 check: the graph checks
    m["files"] = {n: hashlib.sha256((stripped / n).read_bytes()).hexdigest() for n in m["files"]}
    (stripped / "manifest.json").write_text(json.dumps(m))
    rt = OnnxRuntimeModel(stripped, device="cpu")
    with pytest.raises(FGMRuntimeError, match="not an fgm encoder graph"):
        rt.encode(np.zeros((1, 2)))
    with pytest.raises(FGMRuntimeError, match="cannot load"):
        rt.sample(2)

    # through the CLI: one line on stderr, exit status 1
    from fgm_core.cli import main

    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(SystemExit) as stop:
        main(["encode", str(stripped), str(tmp_path / "x.npy"), "--device", "cpu"])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fgm: ") and "not an fgm encoder graph" in err and "\n" not in err


CUDA_USABLE = torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(CUDA_USABLE, reason="a CUDA GPU is present: test_cuda_device_must_really_run_on_cuda runs instead")
def test_cuda_device_without_a_gpu_is_a_clear_error(exports):
    _, out, _ = exports("mlp-ring8-density")
    with pytest.raises(FGMRuntimeError, match="(?i)cuda"):
        OnnxRuntimeModel(out, device="cuda").sample(2)


@pytest.mark.skipif(not CUDA_USABLE, reason="needs a CUDA GPU (torch.cuda) and onnxruntime's CUDAExecutionProvider")
def test_cuda_device_must_really_run_on_cuda(exports):
    _, out, _ = exports("mlp-ring8-density")
    rt = OnnxRuntimeModel(out, device="cuda")
    rt.sample(2)
    assert rt.provider == "CUDAExecutionProvider"  # a real GPU: then IO binding ran
    np.testing.assert_allclose(rt.sample(z=np.zeros((2, 3)), eps=np.zeros((2, 2))),
                               OnnxRuntimeModel(out, device="cpu").sample(z=np.zeros((2, 3)), eps=np.zeros((2, 2))),
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the Node.js example
def _node_modules(tmp_path: Path) -> Path | None:
    """examples/node-sample with onnxruntime-node installed (in place if already, else a tmp copy)."""
    if (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        return NODE_EXAMPLE
    npm = shutil.which("npm")
    if npm is None:
        return None
    copy = tmp_path / "node-sample"
    shutil.copytree(NODE_EXAMPLE, copy, ignore=shutil.ignore_patterns("node_modules", "*.npy"))
    try:
        subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=copy,
                       capture_output=True, timeout=60, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return copy if (copy / "node_modules" / "onnxruntime-node").is_dir() else None


def node_example(tmp_path: Path) -> tuple[str, Path]:
    """(node, the example directory with onnxruntime-node), or skip the test."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    where = _node_modules(tmp_path)
    if where is None:
        pytest.skip("onnxruntime-node is not installed and `npm install --ignore-scripts` did not finish in 60 s")
    return node, where


def test_node_example(exports, tmp_path):
    node, where = node_example(tmp_path)
    _, out, _ = exports("dcgan-density")
    g = np.random.default_rng(0)
    z = g.standard_normal((5, 3)).astype(np.float32)
    eps = g.standard_normal((5, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "eps.npy", eps)
    proc = subprocess.run([node, str(where / "sample.mjs"), str(out), "--z", str(tmp_path / "z.npy"),
                           "--eps", str(tmp_path / "eps.npy"), "-o", str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "x.npy")
    expect = OnnxRuntimeModel(out, device="cpu").sample(z=z, eps=eps)
    assert got.shape == expect.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-3)
    # its own noise: n samples, finite, in the data's units
    proc = subprocess.run([node, str(where / "sample.mjs"), str(out), "-n", "3"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["shape"] == [3, 1, 28, 28] and all(math.isfinite(v) for v in summary["first_rows"][0])
