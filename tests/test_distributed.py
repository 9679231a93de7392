"""Multi-process training: ``fgm train --nproc 2`` (torchrun, gloo on CPU) against one process.

Each process takes its half of every global batch (data and noise), gradients are averaged
by all-reduce, and only process 0 writes the run directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgm_core.api import resolve_config
from fgm_core.errors import FGMError
from fgm_core.plugins import PluginSet
from fgm_core.trainer import Trainer

FGM = str(Path(sys.executable).parent / "fgm")
ENV = {**os.environ, "FGM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("WORLD_SIZE", None)

CONFIG = """
[data]
dataset = "ring8"
options = { n_train = 2000, n_test = 500 }
[model]
latent_dim = 2
options = { hidden = 16, depth = 2 }
[divergence]
name = "kl"
[optim]
batch_size = 64
schedule = "constant"  # the resumed-to-200 run must follow the 200-step run's schedule
[run]
steps = 200
progress = false
tensorboard = false
checkpoint_every = 50
log_every = 25
eval_samples = 500
"""

# 2 processes vs 1 at the same global batch: both see the same rows and the same noise
# (every process draws the global batch's noise and keeps its half), so they differ only by
# float rounding (a mean of two half-batch means, all-reduced gradients). Measured on CPU with
# this config for seeds 0-4: test log-likelihood differences <= 1e-5 nats and weight
# differences <= 6e-7, while changing the seed moves the log-likelihood by 1 to 90 nats at
# this short training. The tolerances leave 1000x / 170x room for rounding drift on other
# CPUs and still catch a wrong split (duplicated or missing rows or noise would change the
# trajectory like a new seed). (modes_captured is 0 or 1 of 8 after 200 steps: a weak check.)
LL_TOLERANCE = 1e-2  # nats
WEIGHT_TOLERANCE = 1e-4


def fgm_train(tmp: Path, *args: str, out: str = "runs") -> subprocess.Popen:
    return subprocess.Popen([FGM, "train", "--config", str(tmp / "config.toml"), "--out", str(tmp / out), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "config.toml").write_text(CONFIG)
    # side by side to save time: the full run, one stopped at step 100 (resumed below), and
    # the same training in one process
    runs = [fgm_train(tmp, "--nproc", "2", "--name", name, "--steps", steps)
            for name, steps in (("full", "200"), ("part", "100"))]
    runs.append(fgm_train(tmp, "--name", "one", out="one"))
    for r in runs:
        finished(r)
    return tmp


def test_two_processes_write_one_run_once(two_proc):
    assert sorted(p.name for p in (two_proc / "runs").iterdir()) == ["full", "part"]  # no stray directories
    run = two_proc / "runs" / "full"
    assert {"config.toml", "config.json", "plugins.json", "data.json", "checkpoint.json", "model.safetensors",
            "metrics.jsonl", "summary.json", "samples.png"} <= {p.name for p in run.iterdir()}
    assert metrics_steps(run) == [25, 50, 75, 100, 125, 150, 175, 200]  # one writer: no duplicate rows
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000200.model.safetensors", "step-00000200.state.json", "step-00000200.state.safetensors"]
    w = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w.values())
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))


def test_matches_one_process_at_the_same_global_batch(two_proc):
    s1 = json.loads((two_proc / "one" / "one" / "summary.json").read_text())
    s2 = json.loads((two_proc / "runs" / "full" / "summary.json").read_text())
    assert abs(s1["test_log_likelihood"] - s2["test_log_likelihood"]) < LL_TOLERANCE, (s1, s2)
    assert s1["modes_captured"] == s2["modes_captured"]
    w1, w2 = (load_file(str(d / "model.safetensors")) for d in (two_proc / "one" / "one", two_proc / "runs" / "full"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < WEIGHT_TOLERANCE


def test_resume_under_two_processes_is_exact_and_one_process_continues(two_proc):
    part = two_proc / "runs" / "part"
    assert metrics_steps(part) == [25, 50, 75, 100]
    copy = two_proc / "copy" / "part"
    shutil.copytree(part, copy)
    two = fgm_train(two_proc, "--nproc", "2", "--resume", str(part), "--steps", "200")
    one = fgm_train(two_proc, "--resume", str(copy), "--steps", "200", out="copy")  # the same checkpoint, 1 process
    assert finished(two).count("run: ") == 1  # process 0 reports
    finished(one)
    assert metrics_steps(part) == [25, 50, 75, 100, 125, 150, 175, 200]
    # gloo's all-reduce on CPU is deterministic for a fixed number of processes: bit for bit
    wf = load_file(str(two_proc / "runs" / "full" / "model.safetensors"))
    wr = load_file(str(part / "model.safetensors"))
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    # checkpoints do not depend on the number of processes: one process continues it too
    w1 = load_file(str(copy / "model.safetensors"))
    assert max(float((wf[k] - w1[k]).abs().max()) for k in wf) < WEIGHT_TOLERANCE


def test_batch_must_divide_among_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    cfg, plugins = resolve_config({"run": {"out_dir": str(tmp_path)}}, ["optim.batch_size=64"], None,
                                          PluginSet(only=["divergences", "mlp", "datasets", "report"], strict=True))
    with pytest.raises(FGMError, match="optim.batch_size 64 is not divisible by the 3 training processes"):
        Trainer(cfg, plugins)
    assert not any(tmp_path.iterdir())


def test_launcher_checks_the_batch_before_starting(tmp_path):
    r = subprocess.run([FGM, "train", "--nproc", "2", "--set", "optim.batch_size=63", "--out", str(tmp_path / "runs")],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["fgm: error: optim.batch_size 63 is not divisible by the 2 training "
                                             "processes (use a batch size that is a multiple of 2)"]
    assert not (tmp_path / "runs").exists()
