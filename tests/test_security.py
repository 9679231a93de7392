"""Data loss and security: fgm never deletes what it did not write, never runs code that came
with a run or an export, reads only files inside their folder, and refuses swapped files.

- ``fgm export RUN -o DIR`` replaces DIR only when DIR is exactly an fgm export (its
  ``manifest.json`` lists every other file with the sha256 it still has); otherwise it refuses.
- A run or export folder is data: a ``plugins.toml`` and ``helper.py`` inside it are never
  imported by sample, export, score or evaluate (a helper that would write a marker file
  proves it; the same policy named with ``--plugins-toml`` does import it).
- ``blocked`` and ``enabled`` apply to local plugins.
- File names read from files (checkpoint tags, manifest entries) stay inside their folder;
  symbolic links are refused; run names are one folder name.
- sha256 records: a graph or weights file from another model is refused, naming the file.
- Two plugins registering one name break only the commands that use it; a misspelled hook
  is a warning, fatal with ``--strict-plugins``.

Everything runs in-process through the console entry point ``fgm_core.cli.main`` (or the API
function a command calls), on two tiny 40-step ring8 runs; exports use the fast torchscript
exporter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fgm_core as fgm
from fgm_core.cli import main
from fgm_core.plugins import clear_cache

ENV_KEYS = ("FGM_PLUGINS", "FGM_STRICT_PLUGINS", "FGM_PLUGINS_TOML")


def tiny(out_dir: Path, name: str, seed: int) -> dict:
    return {
        "data": {"dataset": "ring8", "options": {"n_train": 1000, "n_test": 200}},
        "model": {"architecture": "mlp", "latent_dim": 2, "options": {"hidden": 16, "depth": 2}},
        "divergence": {"name": "kl"},
        "optim": {"batch_size": 64},
        "run": {"steps": 40, "seed": seed, "checkpoint_every": 20, "threads": 1, "device": "cpu",
                "tensorboard": False, "progress": False, "eval_samples": 100, "out_dir": str(out_dir),
                "name": name},
    }


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``fgm ARGV`` in-process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(code: int, err: str, *words: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("fgm: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (links as their target)."""
    return {p.relative_to(folder).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_json(path: Path, **changes) -> dict:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))
    return d


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FGM_NO_PROGRESS", "1")
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("security")


def _train(work: Path, name: str, seed: int) -> Path:
    threads = torch.get_num_threads()
    try:
        return fgm.train(tiny(work / "runs", name, seed), progress=False).path
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(work) -> Path:
    return _train(work, "a", seed=7)


@pytest.fixture(scope="module")
def other_run(work) -> Path:
    """Another model with the same networks and data: its files have the same signatures."""
    return _train(work, "b", seed=8)


@pytest.fixture(scope="module")
def export(work, run) -> Path:
    out = work / "exports" / "a"
    fgm.export(run, out, exporter="torchscript")
    return out


@pytest.fixture
def copy_of(tmp_path):
    def copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copytree(src, dst, symlinks=True)
        return dst
    return copy


# --------------------------------------------------------------------------- 1. export directories
def test_export_refuses_a_folder_it_did_not_write(run, tmp_path, capsys):
    """A web app with its own manifest.json survives `fgm export -o` untouched (exit 1)."""
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (app / "index.html").write_text("<html></html>")
    (app / "src" / "app.js").write_text("console.log(1)")
    before = snapshot(app)
    code, _, err = cli(capsys, "export", str(run), "-o", str(app))
    one_error(code, err, str(app), "is not an fgm export")
    assert snapshot(app) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webapp"]  # no temporary export left

    file_target = tmp_path / "a-file"
    file_target.write_text("keep me")
    code, _, err = cli(capsys, "export", str(run), "-o", str(file_target))
    one_error(code, err, "is not a directory")
    assert file_target.read_text() == "keep me"


@pytest.mark.parametrize("damage", ["extra-file", "changed-graph", "forged-listing"])
def test_export_refuses_an_export_the_user_changed(damage, run, export, copy_of, tmp_path, capsys):
    """An fgm export with a file added (or a graph edited) is the user's now: refused, all kept."""
    out = copy_of(export)
    if damage == "extra-file":
        (out / "notes.txt").write_text("my notes")
        word = "does not list (notes.txt)"
    elif damage == "changed-graph":
        (out / "generator.onnx").write_bytes((out / "generator.onnx").read_bytes() + b"\0")
        word = "generator.onnx was changed"
    else:  # a manifest that lists a file outside the folder
        edit_json(out / "manifest.json", files={"../x": "0" * 64, **json.loads((out / "manifest.json").read_text())["files"]})
        word = "../x, listed in its manifest.json, is missing or not a plain file"
    before = snapshot(out)
    code, _, err = cli(capsys, "export", str(run), "-o", str(out))
    one_error(code, err, "is not an fgm export", word)
    assert snapshot(out) == before


def test_export_replaces_a_previous_export_and_imports_nothing_from_the_run(run, copy_of, tmp_path, capsys,
                                                                             monkeypatch):
    """An export replaces an earlier fgm export in place; the run folder's own plugins.toml
    and helper.py never run (the same policy named by the user does run). The replacement
    goes through ``fgm.export``, the function `fgm export` calls, with the fast exporter."""
    shared = copy_of(run, "shared-run")
    marker = tmp_path / "MARKER"
    (shared / "helper.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    (shared / "plugins.toml").write_text('[plugins.local]\nhelper = "helper.py"\n')
    monkeypatch.chdir(tmp_path)

    out = tmp_path / "deploy"
    fgm.export(shared, out, exporter="torchscript", roles=["generator"])
    old = json.loads((out / "manifest.json").read_text())
    assert sorted(old["files"]) == ["generator.onnx"]
    fgm.export(shared, out, exporter="torchscript")
    new = json.loads((out / "manifest.json").read_text())
    assert sorted(new["files"]) == ["density.onnx", "encoder.onnx", "generator.onnx", "likelihood.onnx"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*new["files"], "manifest.json"])
    for name, digest in new["files"].items():
        assert sha(out / name) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "shared-run"]  # no hidden leftovers

    data = tmp_path / "x.npy"
    np.save(data, np.zeros((5, 2), dtype=np.float32))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")  # `fgm export` loads the run, then refuses this
    code, _, err = cli(capsys, "export", str(shared), "-o", str(tmp_path / "mine"))
    one_error(code, err, "is not an fgm export")
    for argv in (["sample", str(shared), "-n", "4", "-o", str(tmp_path / "s.npy")],
                 ["score", str(shared), str(data), "-k", "2"],
                 ["evaluate", str(shared), "-k", "2", "--samples", "50", "--test", "20", "--no-classifier"],
                 ["sample", str(out), "-n", "4", "--device", "cpu", "-o", str(tmp_path / "t.npy")]):
        code, _, err = cli(capsys, *argv)
        assert code == 0, (argv, err)
    monkeypatch.chdir(shared)  # even as the working directory, a run folder is no policy source
    code, _, err = cli(capsys, "sample", ".", "-n", "2", "-o", str(tmp_path / "u.npy"))
    assert code == 0, err
    assert not marker.exists()

    # the control: the helper does run when the user names the policy
    code, _, err = cli(capsys, "--plugins-toml", str(shared / "plugins.toml"), "plugins")
    assert code == 0, err
    assert marker.read_text() == "code ran"


# --------------------------------------------------------------------------- 3. policy for local plugins
@pytest.mark.parametrize("rule", ['blocked = ["helper"]', 'enabled = ["mlp", "datasets", "divergences"]', ""])
def test_blocked_and_enabled_apply_to_local_plugins(rule, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "helper.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    (tmp_path / "plugins.toml").write_text(f'[plugins]\n{rule}\n[plugins.local]\nhelper = "helper.py"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "plugins", "--json")
    assert code == 0, err
    names = {p["name"] for p in json.loads(out)}
    assert ("helper" in names) == (rule == "") == marker.exists()
    if rule:
        code, _, err = cli(capsys, "train", "--plugin", "helper", "--steps", "1")
        one_error(code, err, "plugin 'helper' is not loaded", "blocks it" if "blocked" in rule else "does not enable it")


# --------------------------------------------------------------------------- 4. paths stay in their folder
def _weights_outside(run: Path, tmp_path: Path) -> Path:
    """A copy of the run's real checkpoint weights outside the run (they would load fine)."""
    tag = json.loads((run / "checkpoint.json").read_text())["tag"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(run / "checkpoints" / f"{tag}.model.safetensors", elsewhere / "x.model.safetensors")
    return elsewhere / "x.model.safetensors"


@pytest.mark.parametrize("tag", ["../../elsewhere/x", "ABSOLUTE"])
def test_checkpoint_tag_cannot_leave_the_run(tag, run, copy_of, tmp_path, capsys):
    r = copy_of(run)
    (r / "model.safetensors").unlink()  # load from the checkpoint
    outside = _weights_outside(run, tmp_path)
    tag = str(outside.with_name("x")) if tag == "ABSOLUTE" else tag
    ptr = json.loads((r / "checkpoint.json").read_text())
    ptr["sha256"]["model.safetensors"] = sha(outside)  # only the confinement can stop it
    edit_json(r / "checkpoint.json", tag=tag, sha256=ptr["sha256"])
    code, _, err = cli(capsys, "sample", str(r), "-n", "2", "-o", str(tmp_path / "s.npy"))
    one_error(code, err, "checkpoint.json", "tag")
    code, _, err = cli(capsys, "train", "--resume", str(r), "--steps", "60", "-q")
    one_error(code, err, "checkpoint.json", "tag")
    assert not (tmp_path / "s.npy").exists()


def test_symlinked_weights_are_refused(run, copy_of, tmp_path, capsys):
    r = copy_of(run)
    real = tmp_path / "real.safetensors"
    shutil.move(r / "model.safetensors", real)  # same bytes: the sha256 would match
    (r / "model.safetensors").symlink_to(real)
    code, _, err = cli(capsys, "sample", str(r), "-n", "2", "-o", str(tmp_path / "s.npy"))
    one_error(code, err, "model.safetensors is a symbolic link")


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_export_graph_files_stay_in_the_export(where, export, copy_of, tmp_path, capsys):
    from fgm_onnx.runtime import FGMRuntimeError, OnnxRuntimeModel

    e = copy_of(export)
    outside = tmp_path / "outside" / "generator.onnx"
    outside.parent.mkdir()
    shutil.copy(export / "generator.onnx", outside)
    m = json.loads((e / "manifest.json").read_text())
    if where == "symlink":
        (e / "generator.onnx").unlink()
        (e / "generator.onnx").symlink_to(outside)
        word = "generator.onnx is a symbolic link"
    else:
        name = str(outside) if where == "absolute" else "../outside/generator.onnx"
        for g in m["graphs"]:
            if g["role"] == "generator":
                g["file"] = name
        m["files"][name] = sha(outside)
        (e / "manifest.json").write_text(json.dumps(m))
        word = f"names the graph file {name!r}, outside"
    code, _, err = cli(capsys, "sample", str(e), "-n", "2", "--device", "cpu", "-o", str(tmp_path / "s.npy"))
    one_error(code, err, word)
    with pytest.raises(FGMRuntimeError, match="symbolic link|outside"):
        OnnxRuntimeModel(e, device="cpu").sample(2)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/fgm-escaped-run", "a/b", ".."])
def test_run_name_is_one_folder(name, tmp_path, capsys):
    runs = tmp_path / "deep" / "runs"
    code, _, err = cli(capsys, "train", "--out", str(runs), "--name", name, "--steps", "1", "-q")
    one_error(code, err, "run.name")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/fgm-escaped-run").exists()
    assert not runs.exists() or not any(runs.iterdir())


# --------------------------------------------------------------------------- 5. integrity
def test_a_graph_from_another_model_is_refused(run, other_run, export, copy_of, tmp_path, capsys):
    from fgm_onnx.runtime import FGMRuntimeError, OnnxRuntimeModel

    foreign = tmp_path / "foreign"
    fgm.export(other_run, foreign, exporter="torchscript", roles=["generator"])
    e = copy_of(export)
    shutil.copy(foreign / "generator.onnx", e / "generator.onnx")  # same inputs, outputs and metadata keys
    code, _, err = cli(capsys, "sample", str(e), "-n", "2", "--device", "cpu", "-o", str(tmp_path / "s.npy"))
    one_error(code, err, "generator.onnx does not match the sha256")
    with pytest.raises(FGMRuntimeError, match="generator.onnx does not match the sha256"):
        OnnxRuntimeModel(e, device="cpu").sample(2)
    # the untouched graphs of the same export still work
    assert OnnxRuntimeModel(e, device="cpu").encode(np.zeros((3, 2), np.float32))[0].shape == (3, 2)


def test_weights_from_another_model_are_refused(run, other_run, copy_of, tmp_path, capsys):
    r = copy_of(run)
    shutil.copy(other_run / "model.safetensors", r / "model.safetensors")
    code, _, err = cli(capsys, "sample", str(r), "-n", "2", "-o", str(tmp_path / "s.npy"))
    one_error(code, err, "model.safetensors does not match the sha256")

    r = copy_of(run, "resumable")
    tag = json.loads((r / "checkpoint.json").read_text())["tag"]
    for part in ("model.safetensors", "state.safetensors"):
        shutil.copy(other_run / "checkpoints" / f"{tag}.{part}", r / "checkpoints" / f"{tag}.{part}")
        code, _, err = cli(capsys, "train", "--resume", str(r), "--steps", "60", "-q")
        one_error(code, err, f"{tag}.{part} does not match the sha256")
        shutil.copy(run / "checkpoints" / f"{tag}.{part}", r / "checkpoints" / f"{tag}.{part}")


# --------------------------------------------------------------------------- 6. plugin loading
DUP = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("dup", lambda request: None, "from {tag}")
'''

MISSPELLED = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_divergence(register):
    register("never", object)
'''


def test_a_name_two_plugins_register_breaks_only_its_users(export, tmp_path, capsys, monkeypatch):
    for tag in ("a", "b"):
        (tmp_path / f"dup_{tag}.py").write_text(textwrap.dedent(DUP.format(tag=tag)))
    (tmp_path / "plugins.toml").write_text('[plugins.local]\ndup_a = "dup_a.py"\ndup_b = "dup_b.py"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "plugins")
    assert code == 0, err
    assert "clash: dataset 'dup' (also registered by 'dup_b')" in out
    code, out, err = cli(capsys, "plugins", "--json")
    infos = {p["name"]: p for p in json.loads(out)}
    assert infos["dup_a"]["clashes"] == ["dataset 'dup' (also registered by 'dup_b')"]
    assert infos["dup_b"]["clashes"] == ["dataset 'dup' (also registered by 'dup_a')"]
    code, _, err = cli(capsys, "sample", str(export), "-n", "3", "--device", "cpu", "-o", str(tmp_path / "s.npy"))
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (3, 2)
    code, _, err = cli(capsys, "train", "--dataset", "dup", "--steps", "1", "-q")
    one_error(code, err, "dataset 'dup' is registered by 2 plugins: 'dup_a' and 'dup_b'")
    code, _, err = cli(capsys, "--strict-plugins", "plugins")
    one_error(code, err, "dataset 'dup' is registered by 2 plugins")


def test_a_misspelled_hook_is_reported(tmp_path, capsys, monkeypatch):
    (tmp_path / "typo.py").write_text(textwrap.dedent(MISSPELLED))
    (tmp_path / "plugins.toml").write_text('[plugins.local]\ntypo = "typo.py"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "plugins")
    assert code == 0, err
    assert ("warning: plugin 'typo' implements 'register_divergence', which is not an fgm hook "
            "(did you mean 'register_divergences'?)") in out
    code, out, _ = cli(capsys, "plugins", "--json")
    assert len({p["name"]: p for p in json.loads(out)}["typo"]["warnings"]) == 1
    code, _, err = cli(capsys, "--strict-plugins", "plugins")
    one_error(code, err, "'register_divergence', which is not an fgm hook")


@pytest.mark.parametrize("command", ["resume", "plot"])
def test_no_write_follows_a_link_planted_in_a_run(command, run, copy_of, tmp_path, capsys):
    """A shared run whose metrics.jsonl points at a file elsewhere: resume and plot refuse it."""
    r = copy_of(run)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (r / "metrics.jsonl").unlink()
    (r / "metrics.jsonl").symlink_to(victim)
    argv = ["train", "--resume", str(r), "--steps", "60", "-q"] if command == "resume" else ["plot", str(r)]
    code, _, err = cli(capsys, *argv)
    one_error(code, err, "metrics.jsonl is a symbolic link")
    assert victim.read_text() == "precious\n"
    assert not (r / "plots").exists()
