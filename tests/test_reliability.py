"""Crash safety and safe loading: fgm keeps working under faults, loses no finished work and
never runs code from a data or weight file.

- A training subprocess killed with SIGKILL right after a checkpoint, then ``fgm train
  --resume``, ends with weights bit-identical to an uninterrupted run with the same seed;
  Ctrl-C (SIGINT) saves a checkpoint and exits cleanly, and resuming gives the same weights.
- Truncated or corrupted weights, checkpoint state, JSON files and ONNX graphs give one
  error line naming the file; run and export directories of another format version say so.
- Pickles are never loaded, whatever their file name.
- A plugin that raises during training or export is named, and the last checkpoint stays.

The kill tests run the real ``fgm`` console script in subprocesses; everything else calls the
console entry point ``fgm_core.cli.main`` in-process (same code path, no interpreter start-up).
All runs are tiny MLPs on ring8 with one torch thread (the CI machine has 2 busy cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fgm_core as fgm
from fgm_core.cli import main
from fgm_core.config import build_config, dump_toml
from fgm_core.errors import FGMError
from fgm_core.storage import atomic_write_bytes, load_tensors, read_json

ROOT = Path(__file__).resolve().parents[1]
FGM = Path(sys.executable).parent / "fgm"
STEPS = 400


def tiny(out_dir: Path, name: str | None = None, steps: int = STEPS, every: int = 20) -> dict:
    """The tiny ring8 configuration every run of this file uses."""
    return {
        "data": {"dataset": "ring8", "options": {"n_train": 2000, "n_test": 200}},
        "model": {"architecture": "mlp", "latent_dim": 2, "options": {"hidden": 16, "depth": 2}, "prior": "mixture"},
        "divergence": {"name": "kl"},
        "optim": {"batch_size": 64, "schedule": "constant"},
        "run": {"steps": steps, "seed": 7, "checkpoint_every": every, "threads": 1, "device": "cpu",
                "tensorboard": False, "progress": False, "eval_samples": 200, "out_dir": str(out_dir),
                "name": name},
    }


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FGM_")}
    e.update(FGM_NO_PROGRESS="1", OMP_NUM_THREADS="1", FGM_NO_PLUGIN_COMMANDS="1")
    return e


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run ``fgm ARGV`` in-process through the console entry point: (exit status, stderr)."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fgm: error: "), err
    assert "Traceback" not in err
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]), k


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """The uninterrupted run (in-process): its final model.safetensors."""
    threads = torch.get_num_threads()
    try:
        run = fgm.train(tiny(work / "runs", "reference"), progress=False)
    finally:
        torch.set_num_threads(threads)
    return run.path / "model.safetensors"


@pytest.fixture(scope="module")
def tiny_toml(work) -> Path:
    cfg = build_config(tiny(work / "cli-runs"))
    path = work / "tiny.toml"
    path.write_text(dump_toml(cfg))
    return path


@pytest.fixture(scope="module")
def small_run(work) -> Path:
    """A finished 40-step run (checkpoints at 20 and 40) to copy and damage."""
    threads = torch.get_num_threads()
    try:
        return fgm.train(tiny(work / "runs", "small", steps=40), progress=False).path
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_export(work, small_run) -> Path:
    out = work / "exports" / "small"
    fgm.export(small_run, out)
    return out


@pytest.fixture
def copy_of(tmp_path):
    def get(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst
    return get


def start_training(toml: Path, name: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(FGM), "train", "-c", str(toml), "--name", name, "-q"], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, timeout: float = 180.0) -> int:
    """Poll until the first checkpoint pointer exists; returns its step."""
    ptr = run / "checkpoint.json"
    t0 = time.monotonic()
    while not ptr.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited with {proc.returncode} before its first checkpoint:\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("no checkpoint within the timeout")
        time.sleep(0.005)
    return json.loads(ptr.read_text())["step"]


def resume(run: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(FGM), "train", "--resume", str(run), "-q"], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- crash safety
def test_sigkill_mid_run_then_resume_is_bit_identical(reference, tiny_toml, work, tmp_path):
    run = work / "cli-runs" / "killed"
    proc = start_training(tiny_toml, "killed", tmp_path)
    wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ptr = read_json(run / "checkpoint.json")
    assert 0 < ptr["step"] < STEPS and not (run / "model.safetensors").exists(), "the kill came too late"

    # What a kill inside save_checkpoint can leave: a half-written temporary file and the next
    # step's tensors without the pointer switched to them. Resume must ignore both.
    nxt = ptr["step"] + 20
    (run / "checkpoints" / f"step-{nxt:08d}.model.safetensors").write_bytes(b"\x10\x00\x00")
    (run / ".checkpoint.json.crash.tmp").write_text('{"step": ')

    done = resume(run, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert read_json(run / "checkpoint.json")["step"] == STEPS
    assert_bit_identical(run / "model.safetensors", reference)
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == [f"step-{STEPS:08d}.model.safetensors", f"step-{STEPS:08d}.state.json",
                    f"step-{STEPS:08d}.state.safetensors"]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(reference, tiny_toml, work, tmp_path):
    run = work / "cli-runs" / "interrupted"
    proc = start_training(tiny_toml, "interrupted", tmp_path)
    wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err and "interrupted" in err
    ptr = read_json(run / "checkpoint.json")
    assert 0 < ptr["step"] < STEPS
    tag = ptr["tag"]
    load_tensors(run / "checkpoints" / f"{tag}.model.safetensors")  # complete and readable
    load_tensors(run / "checkpoints" / f"{tag}.state.safetensors")
    assert read_json(run / "checkpoints" / f"{tag}.state.json")["step"] == ptr["step"]
    assert not (run / "model.safetensors").exists()  # stopped runs are not "finished"

    done = resume(run, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_bit_identical(run / "model.safetensors", reference)


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.json"
    atomic_write_bytes(target, b'{"step": 20}')

    def die(*_a, **_k):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"step": 40}')
    assert target.read_bytes() == b'{"step": 20}'
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # no temporary left behind


# --------------------------------------------------------------------------- corrupt files
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(64) + b"\xff" * 64)


def _ck(run: Path, kind: str) -> Path:
    return next((run / "checkpoints").glob(f"*.{kind}"))


# (what is damaged, how, the command that must fail, the file the error names)
RUN_CASES = {
    "model-truncated": ("model.safetensors", _truncate, "sample"),
    "model-garbage": ("model.safetensors", _garbage, "sample"),
    "config-truncated": ("config.json", _truncate, "sample"),
    "config-garbage": ("config.json", _garbage, "resume"),
    "data-truncated": ("data.json", _truncate, "sample"),
    "fgm-json-truncated": ("fgm.json", _truncate, "sample"),
    "checkpoint-json-truncated": ("checkpoint.json", _truncate, "resume"),
    "checkpoint-model-truncated": ("model.safetensors@ck", _truncate, "resume"),
    "checkpoint-state-truncated": ("state.safetensors@ck", _truncate, "resume"),
    "checkpoint-state-garbage": ("state.safetensors@ck", _garbage, "resume"),
    "checkpoint-skeleton-truncated": ("state.json@ck", _truncate, "resume"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_corrupt_run_files_are_named(case, small_run, copy_of, capsys, tmp_path):
    what, damage, command = RUN_CASES[case]
    run = copy_of(small_run)
    target = _ck(run, what.split("@")[0]) if what.endswith("@ck") else run / what
    damage(target)
    before = sorted(p.name for p in run.rglob("*"))
    if command == "sample":
        code, err = cli(capsys, "sample", str(run), "-n", "2", "-o", str(tmp_path / "s.npy"), "--device", "cpu")
        assert not (tmp_path / "s.npy").exists()
    else:
        code, err = cli(capsys, "train", "--resume", str(run), "--steps", "60", "-q")
    assert code == 1
    line = one_error_line(err)
    assert str(target) in line, line
    assert re.search(r"corrupt|truncated|invalid", line), line
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written into the damaged run


def test_damaged_data_json_content_is_named(small_run, copy_of, capsys, tmp_path):
    run = copy_of(small_run)
    (run / "data.json").write_text("[1, 2]")  # valid JSON, wrong content
    code, err = cli(capsys, "sample", str(run), "-n", "2", "-o", str(tmp_path / "s.npy"))
    assert code == 1 and "data.json" in one_error_line(err)


@pytest.mark.parametrize("graph", ["generator.onnx", "likelihood.onnx"])
@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_corrupt_onnx_graph_is_named(graph, damage, small_export, copy_of, capsys, tmp_path):
    exp = copy_of(small_export)
    damage(exp / graph)
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    cmd = (["sample", str(exp), "-n", "2", "-o", str(tmp_path / "s.npy")] if graph == "generator.onnx"
           else ["score", str(exp), str(tmp_path / "x.npy")])
    code, err = cli(capsys, *cmd, "--device", "cpu")
    assert code == 1
    assert str(exp / graph) in one_error_line(err)


def test_corrupt_manifest_is_named(small_export, copy_of, capsys, tmp_path):
    exp = copy_of(small_export)
    _truncate(exp / "manifest.json")
    code, err = cli(capsys, "sample", str(exp), "-n", "2", "-o", str(tmp_path / "s.npy"), "--device", "cpu")
    assert code == 1 and str(exp / "manifest.json") in one_error_line(err)


# --------------------------------------------------------------------------- format versions
def _bump(path: Path, key: str = "format_version", value=99) -> None:
    d = json.loads(path.read_text())
    d[key] = value
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("command", ["sample", "resume", "export"])
def test_run_directory_of_another_format_version(command, small_run, copy_of, capsys, tmp_path):
    run = copy_of(small_run)
    _bump(run / "fgm.json")
    if command == "sample":
        code, err = cli(capsys, "sample", str(run), "-n", "2", "-o", str(tmp_path / "s.npy"))
    elif command == "resume":
        code, err = cli(capsys, "train", "--resume", str(run), "--steps", "60", "-q")
    else:
        code, err = cli(capsys, "export", str(run), "-o", str(tmp_path / "exp"))
        assert not (tmp_path / "exp").exists()
    line = one_error_line(err)
    assert code == 1 and "format version 99" in line and "fgm.json" in line


def test_checkpoint_of_another_format_version(small_run, copy_of, capsys):
    run = copy_of(small_run)
    _bump(run / "checkpoint.json")
    code, err = cli(capsys, "train", "--resume", str(run), "--steps", "60", "-q")
    line = one_error_line(err)
    assert code == 1 and "format version 99" in line and "checkpoint.json" in line


def test_export_of_another_format_version(small_export, copy_of, capsys, tmp_path):
    exp = copy_of(small_export, "manifest-v99")
    _bump(exp / "manifest.json")
    code, err = cli(capsys, "sample", str(exp), "-n", "2", "-o", str(tmp_path / "s.npy"), "--device", "cpu")
    line = one_error_line(err)
    assert code == 1 and "format version 99" in line and "manifest.json" in line


def test_graph_of_another_format_version(small_export, copy_of, capsys, tmp_path):
    onnx = pytest.importorskip("onnx")
    exp = copy_of(small_export, "graph-v99")
    proto = onnx.load(str(exp / "generator.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "fgm.format_version":
            prop.value = "99"
    onnx.save(proto, str(exp / "generator.onnx"))
    m = read_json(exp / "manifest.json")  # record the edited graph's sha256: the version check speaks
    m["files"]["generator.onnx"] = hashlib.sha256((exp / "generator.onnx").read_bytes()).hexdigest()
    (exp / "manifest.json").write_text(json.dumps(m))
    code, err = cli(capsys, "sample", str(exp), "-n", "2", "-o", str(tmp_path / "s.npy"), "--device", "cpu")
    line = one_error_line(err)
    assert code == 1 and "format version" in line and "99" in line and "generator.onnx" in line


# --------------------------------------------------------------------------- nothing is unpickled
class _Trap:
    """Unpickling this creates a marker file: proof that something ran code from a file."""

    marker: str = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _trap(marker: Path) -> _Trap:
    t = _Trap()
    t.marker = str(marker)
    return t


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_is_never_unpickled(fmt, small_run, copy_of, capsys, tmp_path):
    run = copy_of(small_run)
    marker = tmp_path / "PWNED"
    payload = {"decoder.out.weight": _trap(marker)}
    for target in (run / "model.safetensors", _ck(run, "model.safetensors"), _ck(run, "state.safetensors")):
        if fmt == "pickle":
            target.write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, target)
    code, err = cli(capsys, "sample", str(run), "-n", "2", "-o", str(tmp_path / "s.npy"))
    assert code == 1 and "model.safetensors" in one_error_line(err)
    code, err = cli(capsys, "train", "--resume", str(run), "--steps", "60", "-q")
    assert code == 1 and ".safetensors" in one_error_line(err)
    code, err = cli(capsys, "export", str(run), "-o", str(tmp_path / "exp"))
    assert code == 1 and "model.safetensors" in one_error_line(err)
    assert not marker.exists()


def test_score_refuses_a_pickled_object_array(small_run, capsys, tmp_path):
    marker = tmp_path / "PWNED"
    data = np.empty(2, dtype=object)
    data[0], data[1] = _trap(marker), _trap(marker)
    np.save(tmp_path / "evil.npy", data, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x=data)
    for f in ("evil.npy", "evil.npz"):
        code, err = cli(capsys, "score", str(small_run), str(tmp_path / f))
        line = one_error_line(err)
        assert code == 1 and f in line and "allow_pickle=False" in line
    assert not marker.exists()


def test_no_code_path_can_unpickle():
    """Static guard: no loader that unpickles is called anywhere in fgm, its plugins or exporters."""
    bad = re.compile(r"torch\.load\(|pickle\.loads?\(|import pickle|allow_pickle\s*=\s*True|joblib\.load|"
                     r"dill\.load|cloudpickle|shelve\.open|marshal\.loads?\(|(?<![.\w])eval\(|(?<![.\w])exec\(")
    offenders = []
    for base in ("fgm_core", "plugins", "exporters"):
        for f in sorted((ROOT / base).rglob("*.py")):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if bad.search(code) or ("np.load(" in code and "allow_pickle=False" not in code):
                    offenders.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


# --------------------------------------------------------------------------- plugins that raise
BOOM_PLUGIN = '''
"""A local plugin whose components fail on demand (tests/test_reliability.py)."""
import os

import torch
from torch import nn

from fgm_architectures.mlp import MLPArchitecture
from fgm_core.components import Exporter
from fgm_core.hookspecs import hookimpl


class Exploding(nn.Module):
    """Wraps the decoder; raises once it has run BOOM_AFTER times in training mode."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.limit = int(os.environ.get("BOOM_AFTER", "1000000000"))

    def forward(self, z):
        if self.training:
            self.calls += 1
            if self.calls > self.limit:
                raise RuntimeError("decoder exploded on purpose")
        return self.inner(z)


class BoomArchitecture(MLPArchitecture):
    name = "boom"

    def build(self, spec):
        nets = super().build(spec)
        nets.decoder = Exploding(nets.decoder)
        return nets


def broken_dataset(request):
    raise ValueError("cannot reach the data server")


class BrokenExporter(Exporter):
    def export(self, run, out_dir, **options):
        (out_dir / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("exporter exploded on purpose")

    def open(self, path, device="auto"):
        raise RuntimeError("never")


@hookimpl
def register_architectures(register):
    register("boom", BoomArchitecture, "mlp whose decoder fails after BOOM_AFTER calls")


@hookimpl
def register_datasets(register):
    register("broken", broken_dataset, "always fails")


@hookimpl
def register_exporters(register):
    register("broken", BrokenExporter, "always fails")
'''


@pytest.fixture
def boom(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "boomplug.py"
    path.write_text(textwrap.dedent(BOOM_PLUGIN))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FGM_NO_PROGRESS", "1")
    from fgm_core.plugins import clear_cache

    clear_cache()
    yield path
    clear_cache()
    sys.modules.pop("fgm_local_boomplug", None)


def _train_args(out: Path, name: str, steps: int = 40, every: int = 5) -> list[str]:
    sets = ['data.options={n_train=500, n_test=100}', 'model.options={hidden=16, depth=2}', "model.latent_dim=2",
            "optim.batch_size=64", f"run.checkpoint_every={every}", "run.threads=1", "run.tensorboard=false",
            "run.eval_samples=100", 'run.device="cpu"']
    return ["train", "-q", "--steps", str(steps), "--out", str(out), "--name", name,
            *[a for s in sets for a in ("--set", s)]]


def test_network_plugin_raising_mid_training_is_named_and_keeps_the_checkpoint(boom, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BOOM_AFTER", "50")  # the decoder runs a few times per step: fails around step 20
    threads = torch.get_num_threads()
    try:
        code, err = cli(capsys, *_train_args(tmp_path / "runs", "boom"), "-a", "boom", "--plugin", str(boom))
    finally:
        torch.set_num_threads(threads)
    line = one_error_line(err)
    assert code == 1
    assert "plugin 'boomplug'" in line and "architecture 'boom'" in line and "decoder exploded on purpose" in line
    run = tmp_path / "runs" / "boom"
    ptr = read_json(run / "checkpoint.json")
    assert 0 < ptr["step"] < 40 and f"last checkpoint (step {ptr['step']}) is intact" in line
    load_tensors(run / "checkpoints" / f"{ptr['tag']}.model.safetensors")
    load_tensors(run / "checkpoints" / f"{ptr['tag']}.state.safetensors")
    assert not (run / "model.safetensors").exists()

    # once the plugin behaves, the run resumes from that checkpoint and finishes
    monkeypatch.delenv("BOOM_AFTER")
    from fgm_core.plugins import clear_cache

    clear_cache()
    sys.modules.pop("fgm_local_boomplug", None)
    try:
        code, err = cli(capsys, "train", "--resume", str(run), "-q", "--plugin", str(boom))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert read_json(run / "checkpoint.json")["step"] == 40 and (run / "model.safetensors").exists()


def test_network_plugin_raising_before_any_checkpoint_leaves_no_run_directory(boom, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BOOM_AFTER", "1")
    code, err = cli(capsys, *_train_args(tmp_path / "runs", "early"), "-a", "boom", "--plugin", str(boom))
    line = one_error_line(err)
    assert code == 1 and "plugin 'boomplug'" in line and "no checkpoint was written" in line
    assert not (tmp_path / "runs" / "early").exists()


def test_dataset_plugin_raising_is_named(boom, capsys, tmp_path):
    code, err = cli(capsys, *_train_args(tmp_path / "runs", "data"), "--dataset", "broken", "--plugin", str(boom))
    line = one_error_line(err)
    assert code == 1 and "dataset 'broken' (plugin 'boomplug')" in line and "cannot reach the data server" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_exporter_plugin_raising_is_named_and_writes_nothing(boom, small_run, capsys, tmp_path):
    (tmp_path / "plugins.toml").write_text(f'[plugins.local]\nboomplug = "{boom.name}"\n')
    out = tmp_path / "exp"
    code, err = cli(capsys, "export", str(small_run), "--format", "broken", "-o", str(out))
    line = one_error_line(err)
    assert code == 1 and "exporter 'broken' (plugin 'boomplug')" in line and "exploded on purpose" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary export dir
