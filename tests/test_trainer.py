"""The trainer and run directory: reproducibility, exact resume, metrics, non-finite stops,
the Python API and the model-use commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fgm_core as fgm
from fgm_core.errors import FGMError
from fgm_core.plugins import PluginSet

FGM = str(Path(sys.executable).parent / "fgm")


def tiny(tmp_path: Path, **over) -> dict:
    cfg = {
        "data": {"dataset": "ring8", "options": {"n_train": 2000, "n_test": 500}},
        "model": {"latent_dim": 2, "options": {"hidden": 16, "depth": 2}},
        "divergence": {"name": "js"},
        # constant: a run resumed to more steps then follows the longer run's schedule exactly
        "optim": {"batch_size": 64, "schedule": "constant"},
        "run": {"steps": 40, "out_dir": str(tmp_path), "progress": False, "tensorboard": False,
                "checkpoint_every": 20, "log_every": 10, "eval_samples": 500},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        cfg[sec][key] = v
    return cfg


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=["divergences", "mlp", "datasets", "report", "onnx"], strict=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def test_run_directory_contents_and_metrics(tmp_path, plugins):
    run = fgm.train(tiny(tmp_path), plugins=plugins)
    files = {p.name for p in run.path.iterdir()}
    assert {"fgm.json", "config.toml", "config.json", "plugins.json", "data.json", "checkpoint.json",
            "model.safetensors", "metrics.jsonl", "summary.json", "samples.png"} <= files
    assert not list(run.path.rglob("*.pt")) and not list(run.path.rglob("*.pkl"))
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        for key in ("loss_critic", "loss_generator", "divergence", "critic_data", "critic_model", "f_prime_at_1",
                    "clamped", "sigma", "lr", "time"):
            assert key in r and math.isfinite(r[key]), key
        assert r["f_prime_at_1"] == 0.0  # js
    names = {p["name"] for p in json.loads((run.path / "plugins.json").read_text())}
    assert {"divergences", "mlp", "datasets"} <= names
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["modes_total"] == 8 and 0 <= summary["high_quality"] <= 1


def test_seeded_runs_reproduce_exactly(tmp_path, plugins):
    a = fgm.train(tiny(tmp_path / "a"), plugins=plugins)
    b = fgm.train(tiny(tmp_path / "b"), plugins=plugins)
    c = fgm.train(tiny(tmp_path / "c", run__seed=1), plugins=plugins)
    wa, wb, wc = weights(a.path), weights(b.path), weights(c.path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_continues_bit_for_bit(tmp_path, plugins):
    full = fgm.train(tiny(tmp_path / "full", run__steps=60), plugins=plugins)
    part_cfg = tiny(tmp_path / "part", run__steps=40)
    part = fgm.train(part_cfg, plugins=plugins)
    resumed = fgm.train(resume=part.path, overrides=["run.steps=60"], plugins=plugins)
    wf, wr = weights(full.path), weights(resumed.path)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    steps = [json.loads(line)["step"] for line in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]


NAN_PLUGIN = '''
import torch
from fgm_core.hookspecs import hookimpl
from fgm_divergences.builtin import JS

class Exploding(JS):
    name = "exploding"
    calls = 0
    def T(self, s):
        type(self).calls += 1
        out = super().T(s)
        return out * float("nan") if type(self).calls > 100 else out

@hookimpl
def register_divergences(register):
    register("exploding", Exploding)
'''


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(tmp_path):
    mod = tmp_path / "nanplug.py"
    mod.write_text(NAN_PLUGIN)
    ps = PluginSet(only=["divergences", "mlp", "datasets", "report", "nanplug"], strict=True, extra_local={"nanplug": mod})
    cfg = tiny(tmp_path / "runs", run__name="boom", run__steps=100)
    cfg["divergence"]["name"] = "exploding"
    with pytest.raises(FGMError, match=r"non-finite .* loss at step \d+; the last good checkpoint is step 20"):
        fgm.train(cfg, plugins=ps)
    run_dir = tmp_path / "runs" / "boom"
    ptr = json.loads((run_dir / "checkpoint.json").read_text())
    assert ptr["step"] == 20
    state = load_file(str(run_dir / "checkpoints" / f"{ptr['tag']}.model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_python_api_sample_encode_scores(tmp_path, plugins):
    run = fgm.train(tiny(tmp_path, run__steps=20), plugins=plugins)
    loaded = fgm.load_run(run.path)
    x = loaded.sample(100, seed=3)
    assert x.shape == (100, 2) and torch.isfinite(x).all()
    assert torch.equal(x, loaded.sample(100, seed=3))
    mu, logvar = loaded.encode(x)
    assert mu.shape == (100, 2) and logvar.shape == (100, 2)
    ll = loaded.log_likelihood(x, k=8)
    ld = loaded.log_density(x)
    assert ll.shape == (100,) and ld.shape == (100,)
    # inference builds no autograd graph (one would hold every batch's activations)
    assert not any(t.requires_grad for t in (x, mu, logvar, ll, ld, loaded.sample(5, noise=False)))
    assert torch.isfinite(ll).all() and torch.isfinite(ld).all()
    # more importance samples give a tighter (higher on average) bound than K = 1
    assert loaded.log_likelihood(x, k=64).mean() >= loaded.log_likelihood(x, k=1).mean() - 1e-3
    with pytest.raises(FGMError, match="shape"):
        loaded.log_likelihood(np.zeros((3, 5), dtype=np.float32))


def test_likelihood_is_in_data_units(tmp_path, plugins):
    """Scaling data by c shifts log p(x) by -D log c: the run reports data-unit densities."""
    run = fgm.train(tiny(tmp_path, run__steps=10), plugins=plugins)
    x = run.sample(50, seed=0)
    ll = run.log_likelihood(x, k=4)
    info = run.info
    from fgm_core.components import Scaling

    run.info = type(info)(info.dataset, info.shape, info.kind, Scaling(0.0, 2.0), info.label_names, info.mixture)
    ll2 = run.log_likelihood(x * 2.0, k=4)
    torch.testing.assert_close(ll2, ll - 2 * math.log(2.0), rtol=1e-5, atol=1e-4)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FGM_NO_PROGRESS": "1", "FGM_PLUGINS": "divergences,mlp,datasets,onnx,report"}
    return subprocess.run([FGM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_train_sample_encode_score_config(tmp_path):
    r = cli("train", "--steps", "20", "--out", "runs", "--name", "r1", "-q",
            "--set", 'data.options={n_train=1000, n_test=200}', "--set", 'model.options={hidden=16, depth=2}',
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "run: runs/r1" in r.stdout and "result: modes" in r.stdout
    run_dir = tmp_path / "runs" / "r1"
    r = cli("sample", str(run_dir), "-n", "32", "-o", "s.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (32, 2)
    assert cli("sample", str(run_dir), "-n", "64", "-o", "s.png", cwd=tmp_path).returncode == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    r = cli("encode", str(run_dir), "s.npy", "-o", "z.npy", cwd=tmp_path)
    assert r.returncode == 0 and np.load(tmp_path / "z.npy").shape == (32, 2)
    r = cli("score", str(run_dir), "s.npy", "-k", "8", "--density", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "log_likelihood,log_density" and len(lines) == 33
    r = cli("config", "show", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0 and "[run]" in r.stdout and "steps = 20" in r.stdout
    r = cli("config", "show", "--divergence", "gan", "--set", "optim.lr=3e-4", "--critic", "joint", cwd=tmp_path)
    assert 'name = "gan"' in r.stdout and "lr = 0.0003" in r.stdout and 'form = "joint"' in r.stdout


def test_config_file_and_override_precedence(tmp_path):
    (tmp_path / "run.toml").write_text('[divergence]\nname = "hellinger"\n[optim]\nlr = 0.01\nbatch_size = 32\n')
    r = cli("config", "show", "--config", "run.toml", "--set", "optim.lr=0.5", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["divergence"]["name"] == "hellinger" and cfg["optim"]["lr"] == 0.5 and cfg["optim"]["batch_size"] == 32
    r = cli("config", "show", "--set", "optim.lrr=1", cwd=tmp_path)
    assert r.returncode == 1 and "unknown key 'optim.lrr'" in r.stderr and "Traceback" not in r.stderr


def test_every_command_has_help(tmp_path):
    for cmd in ["train", "plugins", "sample", "encode", "score", "export", "config"]:
        r = cli(cmd, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Usage:" in r.stdout, cmd
    r = cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and fgm.__version__ in r.stdout
