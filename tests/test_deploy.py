"""Deployment: grounded parity, the manifest as a contract, bounded calls, threads, clipping,
the quiet CPU fallback, the Node.js client for every graph, and the GPU check's CPU part.

Tiny networks trained for two steps; graphs exported with the TorchScript-based exporter
(the default's first choice, about a second for four small graphs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fgm_core as fgm
from fgm_core.errors import FGMError

ort = pytest.importorskip("onnxruntime")

from fgm_onnx import export as E  # noqa: E402
from fgm_onnx.runtime import OnnxRuntimeModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE_EXAMPLE = ROOT / "examples" / "node-sample"
RING = {"dataset": "ring8", "options": {"n_train": 256, "n_test": 64}}
SHAPES = {"dataset": "shapes", "options": {"n_train": 64, "n_test": 16}}


def _config(name: str, out: Path, data: dict, critic: str, div: str) -> dict:
    return {"data": data, "model": {"architecture": "mlp", "latent_dim": 3, "options": {"hidden": 16, "depth": 1},
                                    "sigma": 0.1},
            "divergence": {"name": div}, "critic": {"form": critic}, "optim": {"batch_size": 32},
            "run": {"steps": 2, "out_dir": str(out), "progress": False, "checkpoint_every": 2, "tensorboard": False,
                    "eval_samples": 64, "name": name}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="module")
def ring(work):
    run = fgm.train(_config("ring", work / "runs", RING, "density", "kl"), progress=False)
    out = work / "ring-export"
    return run, out, fgm.export(run, out, exporter="torchscript")


@pytest.fixture(scope="module")
def joint(work):
    run = fgm.train(_config("joint", work / "runs", RING, "joint", "gan"), progress=False)
    out = work / "joint-export"
    return run, out, fgm.export(run, out, roles=["density", "likelihood"])


# --------------------------------------------------------------------------- parity
def test_parity_is_judged_against_float64_and_records_its_terms(ring):
    """Each output's recorded error is ONNX against a float64 evaluation of the model, within
    atol + rtol |ref| + 10 x PyTorch float32's own error; recomputed here independently."""
    run, out, manifest = ring
    assert manifest["parity"]["reference"] == "float64 PyTorch" and manifest["parity"]["override"] is False
    g = next(g for g in manifest["graphs"] if g["role"] == "likelihood")
    rec = g["parity"]["log_likelihood"]
    assert rec["onnx_error"] <= rec["atol_used"] and rec["atol_used"] == pytest.approx(1e-5 + 10 * rec["torch_float32_error"])
    # independent check on fresh inputs: float64 model, float32 model, the ONNX graph
    m64 = __import__("copy").deepcopy(run.model).double()
    x = run.sample(16, seed=4)
    eps = torch.randn(6, 16, 3, generator=torch.Generator().manual_seed(2))
    sc, log_det = run.info.scaling, run.info.scaling.log_det(run.info.dims)
    with torch.no_grad():
        ref64 = (m64.log_likelihood(sc.to_model(x).double(), eps.double()) + log_det).numpy()
        t32 = (run.model.log_likelihood(sc.to_model(x), eps) + log_det).numpy()
    sess = ort.InferenceSession(str(out / "likelihood.onnx"), providers=["CPUExecutionProvider"])
    o = sess.run(None, {"x": x.numpy(), "eps": eps.numpy()})[0]
    e32 = np.abs(t32 - ref64).max()
    assert np.abs(o - ref64).max() <= 1e-5 + 1e-5 * np.abs(ref64).max() + 10 * max(e32, rec["torch_float32_error"])


@pytest.mark.parametrize("role", ["generator", "likelihood"])
def test_a_wrong_graph_still_fails_parity(ring, work, monkeypatch, role):
    """A decoder weight scaled by 1.001 in the exported copy only: the graph is wrong by far
    more than float32 rounding, and parity must say so (for both exporters in turn)."""
    run = ring[0]
    real = E.export_copies

    def perturbed(r):
        model, ref = real(r)
        w = next(p for n, p in model.decoder.named_parameters() if n.endswith("weight"))
        w.mul_(1.001)
        return model, ref

    monkeypatch.setattr(E, "export_copies", perturbed)
    with pytest.raises(FGMError, match=rf"parity failed: {role} output .* float64 PyTorch reference"):
        fgm.export(run, work / f"wrong-{role}", exporter="torchscript", roles=[role])
    assert not (work / f"wrong-{role}").exists()
    # an informed override lets it through, and says so in the manifest
    m = fgm.export(run, work / f"wrong-{role}", exporter="torchscript", roles=[role], atol=10.0, rtol=0.01)
    assert m["parity"]["override"] is True and m["parity"]["atol"] == 10.0 and m["parity"]["rtol"] == 0.01


def test_export_cli_records_atol_rtol_and_rejects_bad_values(ring, work, capsys):
    from fgm_core.cli import main

    run = ring[0]
    out = work / "cli-tol"
    main(["export", str(run.path), "-o", str(out), "--exporter", "torchscript", "--atol", "1e-4", "--rtol", "2e-4"])
    m = json.loads((out / "manifest.json").read_text())
    assert (m["parity"]["atol"], m["parity"]["rtol"], m["parity"]["override"]) == (1e-4, 2e-4, True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["export", str(run.path), "-o", str(work / "cli-bad"), "--atol", "-1"])
    assert stop.value.code == 1 and "atol must be a finite number" in capsys.readouterr().err


# --------------------------------------------------------------------------- the manifest as a contract
def test_a_client_following_the_manifest_reproduces_the_runtime(ring):
    """The sampling and score rules, written out here from the manifest's words only, give
    exactly what OnnxRuntimeModel (and so `fgm sample --seed`) gives."""
    _, out, m = ring
    s = m["sampling"]
    d, shape = m["latent_dim"], tuple(m["data_shape"])
    assert s["block_rows"] == 4096 and "z = rng.standard_normal" in s["sample_rule"]
    rt = OnnxRuntimeModel(out, device="cpu")
    gen = ort.InferenceSession(str(out / "generator.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    z = rng.standard_normal((10, d), dtype=np.float32)
    prior = m["prior"]
    if prior["kind"] == "mixture":  # the default for vector data: "k = rng.integers(K) ... z = means[k] + stds[k] * z"
        assert f"k = rng.integers({prior['components']}, size=b)" in s["sample_rule"]
        k = rng.integers(prior["components"], size=10)
        z = np.asarray(prior["means"], np.float32)[k] + np.asarray(prior["stds"], np.float32)[k] * z  # float32 all along
    else:
        assert prior["kind"] == "normal"
    eps = rng.standard_normal((10, *shape), dtype=np.float32)
    np.testing.assert_array_equal(gen.run(None, {"z": z, "eps": eps})[0], rt.sample(10, seed=7))
    lik = ort.InferenceSession(str(out / "likelihood.onnx"), providers=["CPUExecutionProvider"])
    x = rt.sample(5, seed=1)
    e = np.random.default_rng(3).standard_normal((4, 5, d), dtype=np.float32)
    np.testing.assert_allclose(lik.run(None, {"x": x, "eps": e})[0], rt.log_likelihood(x, k=4, seed=3), rtol=1e-6)
    # the scaling's meaning and every input/output documented; rows per call with a memory estimate
    assert m["scaling"]["inside_graphs"] is True and "log_det" in m["scaling"]["log_det_meaning"]
    for g in m["graphs"]:
        assert all(io["doc"] for io in g["inputs"] + g["outputs"]), g["role"]
        r = g["rows_per_call"]
        assert 1 <= r["recommended"] <= r["maximum"] and r["memory_estimate_mib_at_recommended"] > 0
        assert r["unit"] == ("row x k" if g["role"] == "likelihood" else "row")


def test_joint_density_graph_documents_z_and_auto_falls_back_to_dynamo(joint):
    _, _, m = joint
    g = next(g for g in m["graphs"] if g["role"] == "density")
    # gan's (f')^-1 uses expm1, which the TorchScript-based exporter lacks: auto used dynamo there
    assert g["torch_exporter"] == "dynamo" and m["graphs"][1]["torch_exporter"] == "torchscript"
    z = next(i for i in g["inputs"] if i["name"] == "z")
    assert "only the critic output" in z["doc"]
    assert "mean_k" in next(o for o in g["outputs"] if o["name"] == "log_density")["doc"]


# --------------------------------------------------------------------------- bounded calls
def _record_calls(rt: OnnxRuntimeModel) -> list[tuple[str, dict]]:
    calls = []
    real = rt.run

    def run(role, feeds, outputs=None):
        calls.append((role, {k: v.shape for k, v in feeds.items()}))
        return real(role, feeds, outputs)

    rt.run = run
    return calls


def test_k_is_chunked_and_recombined_exactly(joint):
    """rows x K per call stays under the budget; K split across calls gives the single-call
    values: log-mean-exp for the likelihood, a weighted mean for the free-critic density."""
    run, out, _ = joint
    x = run.sample(7, seed=0).numpy()
    lat = np.random.default_rng(0).standard_normal((8, 7, 3)).astype(np.float32)
    whole = OnnxRuntimeModel(out, device="cpu", rows_per_call=10_000)
    ll, ld = whole.log_likelihood(x, eps=lat), whole.log_density(x, eps=lat)
    small = OnnxRuntimeModel(out, device="cpu", rows_per_call=3)
    calls = _record_calls(small)
    ll3, ld3 = small.log_likelihood(x, eps=lat), small.log_density(x, eps=lat)
    assert all(int(np.prod(s["eps"][:2])) <= 3 for _, s in calls)
    assert {s["eps"][0] for _, s in calls} == {3, 2}  # K = 8 as 3 + 3 + 2
    # the same quantities written out: log mean_k exp(log w_k) from the three chunks' outputs
    np.testing.assert_allclose(ll3, ll, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ld3, ld, rtol=1e-5, atol=1e-4)
    z = np.zeros((7, 3), np.float32)
    np.testing.assert_allclose(small.critic(x, z), whole.critic(x, z), rtol=1e-6)


def test_every_role_is_chunked_by_the_manifests_rows(ring):
    _, out, m = ring
    rt = OnnxRuntimeModel(out, device="cpu", rows_per_call=4)
    calls = _record_calls(rt)
    x = rt.sample(10, seed=0)
    rt.encode(x)
    rt.log_density(x)
    rt.log_likelihood(x, k=3)
    assert {r for r, _ in calls} == {"generator", "encoder", "density", "likelihood"}
    assert max(next(iter(s.values()))[0] for r, s in calls if r != "likelihood") == 4
    assert all(s["eps"][0] * s["eps"][1] <= 4 for r, s in calls if r == "likelihood")
    # the default comes from the manifest: one call for these sizes
    rt2 = OnnxRuntimeModel(out, device="cpu")
    assert rt2.graphs["likelihood"].rows == next(g for g in m["graphs"] if g["role"] == "likelihood")[
        "rows_per_call"]["recommended"]
    np.testing.assert_allclose(rt2.log_likelihood(x, k=3), rt.log_likelihood(x, k=3), rtol=1e-5, atol=1e-5)


def test_threads_reach_the_session(ring):
    _, out, _ = ring
    rt = fgm.open_export(out, device="cpu", threads=1)
    rt.sample(2)
    assert rt.graphs["generator"].session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        OnnxRuntimeModel(out, threads=0)


def test_image_samples_clip_to_the_data_range_when_asked(work):
    run = fgm.train(_config("img", work / "runs", SHAPES, "density", "kl"), progress=False)
    out = work / "img-export"
    m = fgm.export(run, out, exporter="torchscript", roles=["generator"], clip=True)
    lo, hi = run.info.scaling.shift - run.info.scaling.scale, run.info.scaling.shift + run.info.scaling.scale
    assert m["sampling"]["clip"]["default"] is True and m["sampling"]["clip"]["range"] == [lo, hi] == [0.0, 255.0]
    z = np.zeros((2, 3), np.float32)
    eps = np.full((2, *run.info.shape), 30.0, np.float32)  # far outside: sigma * 30 in model units
    eps[1] *= -1
    rt = OnnxRuntimeModel(out, device="cpu")
    raw = rt.sample(z=z, eps=eps, clip=False)
    assert raw.max() > hi and raw.min() < lo
    np.testing.assert_array_equal(rt.sample(z=z, eps=eps), np.clip(raw, lo, hi))
    assert OnnxRuntimeModel(out, device="cpu", clip=False).sample(z=z, eps=eps).max() > hi


# --------------------------------------------------------------------------- quiet CPU fallback
def test_auto_device_is_quiet_on_the_cpu_unless_verbose(ring, tmp_path):
    _, out, _ = ring
    fgm_bin = shutil.which("fgm") or str(Path(sys.executable).with_name("fgm"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [fgm_bin, "sample", str(out), "-n", "3", "-o", str(tmp_path / "s.npy")]
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    loud = subprocess.run(cmd + ["-v", "--threads", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    cpu_only = ort.get_available_providers()[:1] == ["CPUExecutionProvider"] or "CUDA did not start" in loud.stderr
    if cpu_only:
        assert quiet.stderr == ""  # neither onnxruntime's CUDA warning nor our line
        lines = loud.stderr.strip().splitlines()
        assert len(lines) == 1 and "CPUExecutionProvider" in lines[0] and len(lines[0]) < 220
    else:  # a GPU: the provider is stated once, also without -v
        assert quiet.stderr.count("CUDAExecutionProvider") == 1


# --------------------------------------------------------------------------- Node.js: every graph
def test_node_client_runs_every_graph(ring, tmp_path):
    from test_onnx_export import node_example

    node, where = node_example(tmp_path)
    run, out, m = ring
    rt = OnnxRuntimeModel(out, device="cpu", rows_per_call=4)  # Node is told the same budget below
    man = json.loads((out / "manifest.json").read_text())
    for g in man["graphs"]:
        g["rows_per_call"]["recommended"] = 4
    node_dir = tmp_path / "export"
    shutil.copytree(out, node_dir)
    (node_dir / "manifest.json").write_text(json.dumps(man))
    g = np.random.default_rng(0)
    x = rt.sample(9, seed=2)
    arrays = {"x": x, "z": g.standard_normal((9, 3)).astype(np.float32),
              "eps": g.standard_normal((9, 2)).astype(np.float32),
              "lat": g.standard_normal((5, 9, 3)).astype(np.float32)}
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
    jobs = {"generator": {"z": "z", "eps": "eps"}, "encoder": {"x": "x"}, "density": {"x": "x"},
            "likelihood": {"x": "x", "eps": "lat"}}
    got = {}
    for role, feeds in jobs.items():
        args = [a for name, f in feeds.items() for a in (f"--{name}", str(tmp_path / f"{f}.npy"))]
        proc = subprocess.run([node, str(where / "run.mjs"), str(node_dir), role, *args, "-o", str(tmp_path / role)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        got[role] = {k: np.load(v["file"]) for k, v in summary["outputs"].items()}
        if role == "likelihood":
            assert summary["calls_k"] == 4 and summary["calls_rows"] == 1  # K = 5 split as 4 + 1
    np.testing.assert_allclose(got["generator"]["x"], rt.sample(z=arrays["z"], eps=arrays["eps"]), rtol=1e-6)
    mu, lv = rt.encode(x)
    np.testing.assert_allclose(got["encoder"]["mu"], mu, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["encoder"]["logvar"], lv, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["density"]["log_density"], rt.log_density(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["likelihood"]["log_likelihood"], rt.log_likelihood(x, eps=arrays["lat"]),
                               rtol=1e-5, atol=1e-5)
    assert all(math.isfinite(v) for v in got["likelihood"]["log_likelihood"])


# --------------------------------------------------------------------------- the GPU check, CPU part
def test_gpu_check_cpu_part_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-only", "--quick",
                           "--work", str(tmp_path), "--json", str(tmp_path / "gpu_check.json"), "--seconds", "0.05"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["device"] == "cpu" and res["failures"] == []
    assert {c["name"] for c in res["checks"]} >= {"train default fp32", "train dcgan bf16", "resume",
                                                  "export + parity", "nccl"}
    assert any(t["backend"] == "onnxruntime" and t["batch"] == 1024 for t in res["throughput"])
