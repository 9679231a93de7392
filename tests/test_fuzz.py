"""The error promise, checked on generated input, and the cases behind it (issue 14).

The promise (README, "Commands"): bad input gives exactly one line ``fgm: error: <problem>
(<fix>)`` on stderr, no traceback and no ``internal error``; the exit status is 1, or 2 when
the command line itself is malformed (an unknown option, a value of the wrong type, a missing
argument: click's convention); nothing half-written is left (no new run or export
directory, no output file) and nothing outside the case's own folder is touched.

The first part checks one example of every class fixed for issue 14. The second is a
hypothesis battery over command lines (option values, numbers at extremes, unicode and NUL,
unknown options), configuration values (TOML files and ``--set``) and file contents
(damaged run files, manifests and graphs, odd data files given to ``score``/``encode``).

Every case runs the console entry point in a process forked from one server that has
imported torch, onnxruntime and fgm once (the runner of tests/test_bad_input.py with more
preloaded), so a case costs a fork plus the command itself. The hypothesis profile is fixed
(derandomize, no deadline); ``FGM_FUZZ_SCALE=N`` multiplies the number of generated cases
(the CI default runs in well under a minute on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import SERVER, TRAIN, Result, Runner, check_error, clean_env, trained  # noqa: F401

import fgm_core as fgm
from fgm_core.errors import FGMError

SCALE = int(os.environ.get("FGM_FUZZ_SCALE", "1"))


def profile(n: int) -> settings:
    return settings(deadline=None, max_examples=n * SCALE, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# a tiny training run: 16-unit MLPs, 2 steps (TINY: on 256 rows of ring8)
TINY_NETS = [*TRAIN, "--set", "model.options.hidden=16", "--set", "model.options.depth=1", "--set",
             "optim.batch_size=32", "--set", "run.eval_samples=64", "--steps", "2"]
TINY = [*TINY_NETS, "--set", "data.options.n_train=256", "--set", "data.options.n_test=64"]
PRELOAD = ("import numpy, torch, onnxruntime, matplotlib.pyplot, fgm_core.api, fgm_core.run, fgm_core.trainer, "
           "fgm_report.plots, fgm_onnx.runtime, fgm_onnx.export\n")


class FastRunner(Runner):
    """The fork server of test_bad_input.py, with torch, onnxruntime and fgm imported up front."""

    def __init__(self, tmp: Path, home: Path) -> None:
        self.tmp, self.n, self.home = tmp, 0, home
        self.proc = subprocess.Popen([sys.executable, "-c", PRELOAD + SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=self.env(), cwd=tmp, text=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {**clean_env(), "HOME": str(self.home), "FGM_NO_PLUGIN_COMMANDS": "1", **extra}

    def __call__(self, argv: list[str], cwd: Path, **env: str) -> Result:
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": self.env(**env), "stdout": str(out),
               "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fgm runner died"
        return Result(json.loads(reply)["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def run(work) -> FastRunner:
    (work / "home").mkdir()
    (work / "server").mkdir()
    r = FastRunner(work / "server", work / "home")
    yield r
    r.close()
    written = [str(p.relative_to(work / "home")) for p in (work / "home").rglob("*")]
    assert not [p for p in written if "fgm" in p.lower()], written  # library caches only (matplotlib, onnxruntime)


@pytest.fixture(scope="module")
def model(trained) -> tuple[Path, Path]:
    """test_bad_input.py's tiny trained run and its ONNX export: (run dir, export dir), which
    the cases copy and never change."""
    return trained


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file; ``lock`` is left out: a resume takes the run's lock (and
    writes its pid there) before it can find out that a checkpoint file is damaged."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.name != "lock"}


def promise(res: Result, case: Path, before: set[str], *, usage_ok: bool = True) -> str | None:
    """The promise for one case run in folder ``case``; returns the error line, if any."""
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    if res.returncode == 0:
        return None
    assert res.returncode in ((1, 2) if usage_ok else (1,)), (res.returncode, res.stderr)
    line = check_error(res)
    after = {str(p.relative_to(case)) for p in case.rglob("*")}
    assert after <= before, f"half-written after an error: {sorted(after - before)}"
    return line


def case_dir(work: Path) -> Path:
    """A fresh folder for one case (and the promise: nothing outside it changes)."""
    work.joinpath("cases").mkdir(exist_ok=True)
    n = len(list((work / "cases").iterdir()))
    d = work / "cases" / f"{n}"
    d.mkdir()
    return d


# =========================================================================== the cases of issue 14
def test_seeds_in_range_work_and_others_are_one_line(run, model, work):
    d = case_dir(work)
    big = str(2**63 - 1)
    res = run([*TINY, "--out", d / "runs", "--name", "big-seed", "--seed", big], d)
    assert res.returncode == 0, res.stderr  # 9.2e18: trained (the epoch order's seed wraps modulo 2**64)
    for seed in [str(2**63), "99999999999999999999999", "-1", "1.5", "1e3", ""]:
        line = check_error(run([*TINY, "--out", d / "runs", "--seed", seed], d), "--seed")
        assert "from 0 to 9223372036854775807" in line
        assert run(["sample", model[1], "-o", d / "s.npy", "--seed", seed], d).returncode == 2
    check_error(run([*TINY, "--out", d / "runs", "--set", "run.seed=-5"], d), "'run.seed'", "greater than or equal to 0")
    check_error(run([*TINY, "--out", d / "runs", "--set", f"run.seed={2**63}"], d), "run.seed")
    res = run(["sample", model[0], "-n", "3", "-o", d / "s.npy", "--seed", big], d)
    assert res.returncode == 0 and np.load(d / "s.npy").shape == (3, 2)
    assert sorted(p.name for p in (d / "runs").iterdir()) == ["big-seed"]


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:", "cuda:²", "cuda:-1", ""])
def test_an_unknown_device_is_one_line(run, model, work, device):
    d = case_dir(work)
    for target in model:
        check_error(run(["sample", target, "-o", d / "s.npy", "--device", device], d), repr(device))
    check_error(run([*TINY, "--out", d / "runs", "--device", device], d), "'run.device'", "cuda:N")
    assert sorted(p.name for p in d.iterdir()) == []


@pytest.mark.parametrize("name", ["a\0b", "a/b", "..", ".", " ", "tab\there", "x" * 256, "back\\slash"])
def test_a_run_name_must_be_a_plain_file_name(run, work, name):
    d = case_dir(work)
    check_error(run([*TINY, "--out", d / "runs", "--name", name], d), "'run.name'")
    check_error(run([*TINY, "--out", d / "runs", "--set", f"run.name={json.dumps(name)}"], d), "'run.name'")
    assert not (d / "runs").exists()


def damaged_copy(src: Path, dst: Path, name: str, content: bytes | None) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()  # so that loading goes through checkpoint.json
    target = dst / name
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    return dst


def _state_json(run_dir: Path) -> str:
    return "checkpoints/" + json.loads((run_dir / "checkpoint.json").read_text())["tag"] + ".state.json"


POINTERS = {
    "no-tag": {"step": 4, "format_version": 1},
    "list": [1, 2, 3],
    "tag-number": {"step": 4, "tag": 4, "format_version": 1},
    "step-text": {"step": "four", "tag": "step-00000004", "format_version": 1},
    "string": "step-00000004",
    "null": None,
}


@pytest.mark.parametrize("kind", sorted(POINTERS))
def test_a_damaged_checkpoint_pointer_names_the_file(run, model, work, kind):
    d = case_dir(work)
    copy = damaged_copy(model[0], d / "run", "checkpoint.json", json.dumps(POINTERS[kind]).encode())
    for argv in (["sample", copy, "-o", d / "s.npy"], ["train", "--resume", copy, "--steps", "6"]):
        check_error(run(argv, d), "checkpoint.json")
    assert not (d / "s.npy").exists()


STATES = {
    "no-skeleton": {"step": 4, "epoch": 0, "pos": 64},
    "list": [],
    "pos-text": {"skeleton": {}, "step": 4, "epoch": 0, "pos": "x"},
    "empty-skeleton": {"skeleton": {}, "step": 4, "epoch": 0, "pos": 64},
    "wrong-keys": {"skeleton": {"__dict__": [["opt_x", 1]]}, "step": 4, "epoch": 0, "pos": 64},
    "missing-tensor": {"skeleton": {"__dict__": [["opt_g", {"__tensor__": "nope"}]]}, "step": 4, "epoch": 0,
                       "pos": 64},
}


@pytest.mark.parametrize("kind", sorted(STATES))
def test_a_damaged_checkpoint_state_names_the_file(run, model, work, kind):
    d = case_dir(work)
    copy = damaged_copy(model[0], d / "run", _state_json(model[0]), json.dumps(STATES[kind]).encode())
    before = snapshot(copy)
    check_error(run(["train", "--resume", copy, "--steps", "6"], d), ".state.json")
    assert snapshot(copy) == before


def test_checkpoint_weights_of_other_networks_name_the_file(run, model, work):
    from safetensors.torch import save_file

    d = case_dir(work)
    tag = json.loads((model[0] / "checkpoint.json").read_text())["tag"]
    copy = damaged_copy(model[0], d / "run", f"checkpoints/{tag}.model.safetensors", b"")
    weights = copy / f"checkpoints/{tag}.model.safetensors"
    save_file({"a": torch.zeros(2)}, str(weights))
    ptr = json.loads((copy / "checkpoint.json").read_text())  # a well-recorded file of other networks
    ptr["sha256"]["model.safetensors"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (copy / "checkpoint.json").write_text(json.dumps(ptr))
    check_error(run(["train", "--resume", copy, "--steps", "6"], d), f"{tag}.model.safetensors",
                "does not match the run's networks")


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_a_malformed_environment_variable_is_one_line(run, model, work, value):
    d = case_dir(work)
    shown = [a for a in TINY if a != "-q"]  # FGM_NO_PROGRESS matters only with the progress display
    for var, argv in [("FGM_STRICT_PLUGINS", ["plugins"]), ("FGM_NO_PROGRESS", [*shown, "--out", d / "runs"]),
                      ("FGM_NO_PLUGIN_COMMANDS", ["plugins"]), ("WORLD_SIZE", [*TINY, "--out", d / "runs"])]:
        res = run(argv, d, **{var: value})
        assert res.returncode == 1, (var, res.stderr)
        check_error(res, var, *([] if var == "WORLD_SIZE" else [repr(value)]))  # WORLD_SIZE=2 alone: no group
    assert not (d / "runs").exists()


PLUGIN_EXITS = {
    "sys-exit-0": "import sys\nsys.exit(0)\n",
    "sys-exit-text": "raise SystemExit('bye')\n",
    "base-exception": "class Stop(BaseException):\n    pass\nraise Stop('from a plugin')\n",
}


@pytest.mark.parametrize("kind", sorted(PLUGIN_EXITS))
def test_a_local_plugin_that_exits_at_import_is_reported_by_name(run, work, kind):
    d = case_dir(work)
    (d / "quitter.py").write_text(PLUGIN_EXITS[kind])
    check_error(run([*TINY, "--out", d / "runs", "--plugin", "./quitter.py"], d), "plugin 'quitter'",
                "failed to import")
    (d / "plugins.toml").write_text('[plugins.local]\nquitter = "quitter.py"\n')
    res = run(["plugins"], d)
    assert res.returncode == 0 and "quitter local" in res.stdout and "FAILED" in res.stdout
    assert res.stderr.startswith("fgm: warning: plugin 'quitter' failed to import"), res.stderr
    check_error(run(["--strict-plugins", "plugins"], d), "plugin 'quitter'")
    assert not (d / "runs").exists()


@pytest.mark.parametrize("setting", ["optim.lr=inf", "optim.lr=nan", "optim.lr=-inf", "model.sigma=inf",
                                     "optim.betas=[0.5, nan]", "divergence.params.alpha=inf",
                                     "model.options.hidden=nan"])
def test_non_finite_settings_are_named_with_their_value(run, work, setting):
    d = case_dir(work)
    key, _, value = setting.partition("=")
    line = check_error(run([*TINY, "--out", d / "runs", "--set", setting], d))
    assert "finite number" in line and value.split(",")[-1].strip(" ]") in line, line
    assert key.rsplit(".", 1)[0] in line
    assert not (d / "runs").exists()


def test_images_over_the_pixel_limit_are_refused_in_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from fgm_core.components import DataRequest
    from fgm_core.plugins import get_plugins

    for side in (12, 40):  # 144 pixels: between 1x and 2x the limit (PIL warns); 1600: PIL refuses
        folder = tmp_path / f"side-{side}"
        folder.mkdir()
        Image.new("RGB", (side, side)).save(folder / "big.png")
        Image.new("RGB", (8, 8)).save(folder / "small.png")
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
        factory = get_plugins().get("datasets", "images").factory
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(FGMError) as e:
                factory(DataRequest(options={"path": str(folder), "size": 8}, seed=0, test_fraction=0.5))
        assert not caught, [str(w.message) for w in caught]
        assert "big.png has more than 100 pixels" in str(e.value) and "decompression bomb" in str(e.value)


def test_a_killed_export_leaves_nothing_the_next_export_keeps(run, model, work):
    d = case_dir(work)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    stale = d / ".exp.k1ll3d00"  # what an export killed after its first graph leaves
    stale.mkdir()
    (stale / ".fgm-partial-export").write_text(f"{dead.pid} {socket.gethostname()}\n")
    (stale / "generator.onnx").write_bytes(b"half")
    mine = d / ".exp.notfgm"  # a user's folder with a similar name: never touched
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    live = d / ".exp.running"  # an export still running (this process): left alone
    live.mkdir()
    (live / ".fgm-partial-export").write_text(f"{os.getpid()} {socket.gethostname()}\n")
    res = run(["export", model[0], "-o", d / "exp"], d)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in d.iterdir()) == [".exp.notfgm", ".exp.running", "exp"]
    assert (mine / "notes.txt").read_text() == "keep"
    assert not (d / "exp" / ".fgm-partial-export").exists()


@pytest.mark.parametrize("lie", ["latent_dim=3", "data_shape=[3]", "data_shape=[2, 1]", "latent_dim=1"])
def test_a_manifest_that_disagrees_with_its_graphs_is_one_line(run, model, work, lie):
    d = case_dir(work)
    exp = d / "exp"
    shutil.copytree(model[1], exp)
    m = json.loads((exp / "manifest.json").read_text())
    key, _, value = lie.partition("=")
    m[key] = json.loads(value)
    (exp / "manifest.json").write_text(json.dumps(m))
    np.save(d / "x.npy", np.zeros((3, 2), np.float32))
    for argv in (["sample", exp, "-n", "3", "-o", d / "s.npy"], ["score", exp, d / "x.npy"],
                 ["encode", exp, d / "x.npy"]):
        line = check_error(run([*argv, "--device", "cpu"], d))
        assert "manifest.json" in line or "the model expects" in line, line
    assert not (d / "s.npy").exists()


def test_csv_rows_must_match_and_score_reads_what_train_reads(run, model, work):
    d = case_dir(work)
    (d / "extra.csv").write_text("x,y\n0.1,0.2\n0.3,0.4,0.5\n0.6,0.7\n")
    (d / "short.csv").write_text("0.1 0.2\n0.3\n")
    for name, line_no, cols in (("extra.csv", 3, 3), ("short.csv", 2, 1)):
        opts = ["--dataset", "array", "--set", f'data.options.path="{d / name}"']
        check_error(run([*TINY_NETS, "--out", d / "runs", *opts], d), f"line {line_no} has {cols} columns")
        check_error(run(["score", model[0], d / name], d), f"line {line_no} has {cols} columns")
    rows = np.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]], np.float32)
    (d / "header.csv").write_text("x,y\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n")
    np.save(d / "rows.npy", rows)
    for target in model:
        a = run(["score", target, d / "header.csv", "-o", d / "a.npy", "--device", "cpu"], d)
        b = run(["score", target, d / "rows.npy", "-o", d / "b.npy", "--device", "cpu"], d)
        assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
        assert np.array_equal(np.load(d / "a.npy"), np.load(d / "b.npy"))
    assert not (d / "runs").exists()


def test_unknown_plugin_names_in_a_config_are_reported(run, work):
    d = case_dir(work)
    names = [f"p{i}" for i in range(300_000)]
    (d / "many.toml").write_text("plugins = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    check_error(run([*TINY, "--out", d / "runs", "-c", d / "many.toml"], d),
                "names 300000 plugins that are not loaded", "'p0'")
    check_error(run([*TINY, "--out", d / "runs", "--set", 'plugins=["mlp", "mpl"]'], d),
                "unknown plugin 'mpl'", "did you mean 'mlp'?")
    assert not (d / "runs").exists()
    assert run([*TINY, "--out", d / "runs", "--set", 'plugins=["mlp"]'], d).returncode == 0


def test_checkpoints_store_the_data_position_not_the_permutation(work):
    """A checkpoint's state has the same size for 1,000 and 100,000 training rows (the
    permutation, 8 bytes a row, is regenerated from the seed and epoch on resume; the
    bit-exact resume across epochs is tests/test_reliability.py's)."""
    from safetensors import safe_open

    sizes = {}
    threads = torch.get_num_threads()
    for n in (1000, 100_000):
        r = fgm.train({"data": {"options": {"n_train": n, "n_test": 64}}, "model": {"options": {"hidden": 8, "depth": 1}},
                       "optim": {"batch_size": 32},
                       "run": {"steps": 3, "checkpoint_every": 3, "threads": 1, "device": "cpu", "tensorboard": False,
                               "progress": False, "eval_samples": 16, "out_dir": str(work / "perm"), "name": f"n{n}"}},
                      progress=False)
        state = next((r.path / "checkpoints").glob("*.state.safetensors"))
        with safe_open(str(state), "pt") as f:
            assert not [k for k in f.keys() if "perm" in k]
        sizes[n] = state.stat().st_size
        torch.set_num_threads(threads)
        meta = json.loads(next((r.path / "checkpoints").glob("*.state.json")).read_text())
        assert (meta["epoch"], meta["pos"]) == (0, 3 * 2 * 32)  # 3 steps of a critic and a generator batch
    assert sizes[1000] == sizes[100_000], sizes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from fgm_core.storage import atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "new.json", b"{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
        os.chmod(tmp_path / "plain.json", 0o640)
        atomic_write_bytes(tmp_path / "plain.json", b"[]")  # replacing keeps the file's mode
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o640
    assert (tmp_path / "plain.json").read_bytes() == b"[]"


def test_run_and_export_files_get_plain_modes(model):
    """Every file of a run and an export has the mode a plain open() gives, every folder a
    plain mkdir()'s (the umask of the process that wrote them)."""
    files = {str(p): stat.S_IMODE(p.stat().st_mode) for m in model for p in [m, *m.rglob("*")] if p.is_file()}
    folders = {str(p): stat.S_IMODE(p.stat().st_mode) for m in model for p in [m, *m.rglob("*")] if p.is_dir()}
    mask = os.umask(0)
    os.umask(mask)
    assert set(files.values()) == {0o666 & ~mask} and set(folders.values()) == {0o777 & ~mask}, (files, folders)


# =========================================================================== the battery
HOSTILE_INT = st.sampled_from(["0", "-1", "-0", "1e3", "0x10", "1_000", "", " ", "nan", "inf", str(2**63),
                               str(2**64), "9" * 30, "-" + "9" * 30, "٣", "1.5", "true"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
# options whose valid values cost nothing; size-like options get only invalid or small values
# (unbounded -n/-k/--steps are another fix's business)
OPTION_VALUES = {
    "--seed": st.one_of(HOSTILE_INT, st.integers(0, 2**63 - 1).map(str)),
    "--device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:-1", "tpu", "auto ", "mps"]), TEXT),
    "--name": TEXT,
    "--steps": st.one_of(HOSTILE_INT.filter(lambda v: not v.strip("-").isdigit() or int(v) < 3),
                         st.integers(1, 2).map(str)),
    "--dataset": st.one_of(st.sampled_from(["ring8", "grid25", "swissroll", "array", "images", "nope"]), TEXT),
    "--divergence": st.one_of(st.sampled_from(["kl", "js", "custom", "alpha", "gan", "klx"]), TEXT),
    "--critic": st.one_of(st.sampled_from(["density", "joint", "marginal"]), TEXT),
    "--architecture": st.one_of(st.sampled_from(["mlp", "dcgan", "wgan_arch"]), TEXT),
    "--plugin": st.one_of(st.sampled_from(["dcgan", "nope", "./missing.py", "/", ".", ""]), TEXT),
    "--config": st.one_of(st.sampled_from(["/", ".", "missing.toml", "/dev/null"]), TEXT),
    "--resume": st.one_of(st.sampled_from(["/", ".", "missing"]), TEXT),
    "--set": st.one_of(TEXT, st.sampled_from(["=", "a=", "=1", "run=1", "run.steps", ".=.", "a.b.c.d=1"])),
    "--nproc": HOSTILE_INT.filter(lambda v: not v.strip().isdigit() or int(v) < 1),
}
UNKNOWN_OPTION = st.sampled_from(["--bogus", "-Z", "--", "--set", "--seed", "--steps=", "-n", "--debu"])


@profile(40)
@given(st.lists(st.tuples(st.sampled_from(sorted(OPTION_VALUES)), st.data()), min_size=1, max_size=3),
       st.booleans(), UNKNOWN_OPTION)
def test_fuzz_train_command_lines(run, work, picks, unknown, extra):
    d = case_dir(work)
    argv = [*TINY, "--out", d / "runs"]
    for opt, data in picks:
        argv += [opt, data.draw(OPTION_VALUES[opt])]
    if unknown:
        argv.append(extra)
    promise(run(argv, d), d, set())


USE_VALUES = {
    "-n": HOSTILE_INT.filter(lambda v: not v.strip().isdigit() or int(v) < 50),
    "-k": HOSTILE_INT.filter(lambda v: not v.strip().isdigit() or int(v) < 50),
    "--seed": OPTION_VALUES["--seed"],
    "--device": OPTION_VALUES["--device"],
    "-o": st.one_of(st.sampled_from(["out.npy", "out.csv", "out.png", "out.txt", "", ".", "/", "out/"]), TEXT),
}
USES = {
    "sample": (["-n", "--seed", "--device", "-o"], ["-o", "s.npy"]),
    "score": (["-k", "--seed", "--device", "-o"], ["DATA"]),
    "encode": (["--device", "-o"], ["DATA"]),
}


@profile(40)
@given(st.sampled_from(sorted(USES)), st.booleans(), st.data())
def test_fuzz_sample_score_encode_options(run, model, work, command, export, data):
    d = case_dir(work)
    np.save(d / "x.npy", np.zeros((3, 2), np.float32))
    allowed, base = USES[command]
    argv = [command, model[export], *(d / "x.npy" if a == "DATA" else a for a in base)]
    for opt in data.draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=3, unique=True)):
        argv += [opt, data.draw(USE_VALUES[opt])]
    if data.draw(st.booleans()):
        argv.insert(data.draw(st.integers(1, len(argv))), data.draw(UNKNOWN_OPTION))
    before = {p.name for p in d.iterdir()}
    snap = snapshot(model[0].parent)
    promise(run(argv, d), d, before)
    assert snapshot(model[0].parent) == snap


# ---------------------------------------------------------------------------- configuration values
TOML_VALUE = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "+nan", "0", "-0", "1e308", "5e-324", str(2**63 - 1), str(-(2**63)),
                     "true", "[]", "{}", '""', '"\\u0000"', '"a/b"', '".."', "[1, [2]]", "{a = {b = 1}}",
                     "1979-05-27", "'''x'''", "0o17", "0b101", "[nan]", '"ring8"', '"cpu"', "1.5", "-1"]),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats().map(lambda f: repr(f) if f == f and abs(f) != float("inf") else "nan"),
    TEXT,
)
SAFE_KEYS = ["run.seed", "run.device", "run.name", "run.precision", "run.log_every", "run.checkpoint_every",
             "optim.lr", "optim.critic_lr", "optim.betas", "optim.optimizer", "optim.schedule", "optim.warmup_steps",
             "optim.grad_clip", "optim.weight_decay", "optim.sigma_lr_scale", "divergence.name", "divergence.max_exp",
             "divergence.params.alpha", "divergence.params.formula", "critic.form", "critic.n_critic",
             "critic.gradient_penalty", "critic.generator_loss", "critic.spectral_norm", "model.sigma",
             "model.min_sigma", "model.generator", "model.latent_dim", "model.learn_sigma", "data.test_fraction",
             "data.dataset", "plugins", "run", "optim", "nope.key", "run.nope", "data.options", "model.options",
             "model.prior", "model.prior_options", "model.prior_options.components"]


@profile(40)
@given(st.lists(st.tuples(st.sampled_from(SAFE_KEYS), TOML_VALUE), min_size=1, max_size=4), st.booleans())
def test_fuzz_config_values(run, work, items, as_file):
    """The same generated settings as --set overrides or as a TOML file (--config)."""
    d = case_dir(work)
    if as_file:
        tables: dict[str, list[str]] = {}
        for key, value in items:
            section, _, rest = key.rpartition(".")
            tables.setdefault(section, []).append(f"{json.dumps(rest)} = {value}")
        text = "".join((f"[{s}]\n" if s else "") + "\n".join(lines) + "\n" for s, lines in sorted(tables.items()))
        (d / "c.toml").write_bytes(text.encode("utf-8", "replace"))
        argv = ["train", "-c", d / "c.toml", *TINY[1:]]
    else:
        argv = [*TINY] + [a for k, v in items for a in ("--set", f"{k}={v}")]
    before = {p.name for p in d.iterdir()}
    promise(run([*argv, "--out", d / "runs"], d), d, before)


# ---------------------------------------------------------------------------- file contents
def mutate(data: bytes, how: str, pos: int, junk: bytes) -> bytes:
    pos = pos % (len(data) + 1)
    return {"cut": data[:pos], "flip": data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:] if pos < len(data)
            else data + b"\xff", "insert": data[:pos] + junk + data[pos:], "replace": junk, "empty": b""}[how]


JSON_ANY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                        max_leaves=8)
RUN_FILES = ["checkpoint.json", "config.json", "data.json", "fgm.json", "plugins.json", "STATE_JSON",
             "model.safetensors", "STATE_TENSORS", "CKPT_MODEL"]
EXPORT_FILES = ["manifest.json", "generator.onnx", "encoder.onnx", "likelihood.onnx", "density.onnx"]


def _run_file(run_dir: Path, name: str) -> str:
    tag = json.loads((run_dir / "checkpoint.json").read_text())["tag"]
    return {"STATE_JSON": f"checkpoints/{tag}.state.json", "STATE_TENSORS": f"checkpoints/{tag}.state.safetensors",
            "CKPT_MODEL": f"checkpoints/{tag}.model.safetensors"}.get(name, name)


@st.composite
def damage(draw, files: list[str]):
    name = draw(st.sampled_from(files))
    how = draw(st.sampled_from(["cut", "flip", "insert", "replace", "empty", "json", "json-field"]))
    return name, how, draw(st.integers(0, 10**6)), draw(st.binary(max_size=16)), draw(JSON_ANY)


def apply_damage(folder: Path, rel: str, how: str, pos: int, junk: bytes, value) -> None:
    path = folder / rel
    data = path.read_bytes()
    if how == "json":
        path.write_text(json.dumps(value))
    elif how == "json-field" and rel.endswith(".json"):
        obj = json.loads(data)
        if isinstance(obj, dict) and obj:
            keys = sorted(obj)
            obj[keys[pos % len(keys)]] = value
        path.write_text(json.dumps(obj))
    else:
        path.write_bytes(mutate(data, how if how in ("cut", "flip", "insert", "replace", "empty") else "cut", pos,
                                junk))


@profile(25)
@given(damage(RUN_FILES), st.sampled_from(["sample", "resume", "score"]), st.booleans())
def test_fuzz_damaged_run_files(run, model, work, hurt, command, final):
    d = case_dir(work)
    copy = d / "run"
    shutil.copytree(model[0], copy)
    if not final:
        (copy / "model.safetensors").unlink()  # loading goes through checkpoint.json
    name, how, pos, junk, value = hurt
    rel = _run_file(copy, name)
    if not (copy / rel).exists():
        return
    apply_damage(copy, rel, how, pos, junk, value)
    np.save(d / "x.npy", np.zeros((3, 2), np.float32))
    argv = {"sample": ["sample", copy, "-n", "4", "-o", d / "s.npy", "--device", "cpu"],
            "resume": ["train", "--resume", copy, "--steps", "5", "-q"],
            "score": ["score", copy, d / "x.npy", "-k", "2", "-o", d / "s.npy", "--device", "cpu"]}[command]
    before = {str(p.relative_to(d)) for p in d.rglob("*")}
    line = promise(run(argv, d), d, before if command != "resume" else before | _resume_files(copy))
    if line is None and command in ("sample", "score"):
        assert np.isfinite(np.load(d / "s.npy")).all(), "a damaged run gave non-finite output silently"


def _resume_files(copy: Path) -> set[str]:
    """What a failed resume may legitimately leave (it owns the run directory)."""
    return {"run/metrics.jsonl", "run/checkpoints", "run/model.safetensors"}


@profile(25)
@given(damage(EXPORT_FILES), st.sampled_from(["sample", "score", "encode"]))
def test_fuzz_damaged_exports(run, model, work, hurt, command):
    d = case_dir(work)
    copy = d / "exp"
    shutil.copytree(model[1], copy)
    name, how, pos, junk, value = hurt
    apply_damage(copy, name, how, pos, junk, value)
    np.save(d / "x.npy", np.zeros((3, 2), np.float32))
    argv = {"sample": ["sample", copy, "-n", "4", "-o", d / "s.npy"],
            "score": ["score", copy, d / "x.npy", "-k", "2", "--density", "-o", d / "s.npy"],
            "encode": ["encode", copy, d / "x.npy", "-o", d / "s.npy"]}[command]
    before = {str(p.relative_to(d)) for p in d.rglob("*")}
    line = promise(run([*argv, "--device", "cpu"], d), d, before)
    if line is None:
        assert np.isfinite(np.load(d / "s.npy")).all(), "a damaged export gave non-finite output silently"


CSV_CELL = st.one_of(st.floats(allow_nan=True).map(repr), st.integers(-(2**70), 2**70).map(str),
                     st.sampled_from(["", " ", "x", '"1"', "nan", "inf", "1e999", "#", "1,5", "\t"]), TEXT)


@st.composite
def data_file(draw):
    kind = draw(st.sampled_from(["csv", "npy", "npy-bytes", "npz", "tsv"]))
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        rows = draw(st.lists(st.lists(CSV_CELL, min_size=0, max_size=4), min_size=0, max_size=5))
        return f"x.{kind}", "\n".join(sep.join(r) for r in rows).encode("utf-8", "replace")
    if kind == "npz":
        return "x.npz", draw(st.binary(max_size=64))
    good = np.zeros((3, 2), np.float32)
    import io

    buf = io.BytesIO()
    shape = draw(st.sampled_from([(3, 2), (0, 2), (2,), (3, 3), (1, 2, 1), (), (3, 1)]))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64", "float16", "U3"]))
    values = draw(st.sampled_from([0.0, np.nan, np.inf, 1e38, -1e308]))
    with np.errstate(over="ignore", invalid="ignore"):  # 1e38 as float16 is inf: on purpose
        arr = np.full(shape, values if dtype.startswith("f") else 1).astype(dtype) if shape else np.array(1, dtype)
    np.save(buf, arr if kind == "npy" else good)
    raw = buf.getvalue()
    if kind == "npy-bytes":
        raw = mutate(raw, draw(st.sampled_from(["cut", "flip", "insert"])), draw(st.integers(0, 200)),
                     draw(st.binary(max_size=8)))
    return "x.npy", raw


@profile(40)
@given(data_file(), st.sampled_from(["score", "encode"]), st.booleans())
def test_fuzz_data_files(run, model, work, file, command, export):
    d = case_dir(work)
    name, content = file
    (d / name).write_bytes(content)
    argv = [command, model[export], d / name, "-o", d / "out.npy", "--device", "cpu"]
    if command == "score":
        argv += ["-k", "2"]
    line = promise(run(argv, d), d, {name})
    if line is None:
        out = np.load(d / "out.npy")
        # no NaN passes silently; -inf is a log-likelihood below float32's range (a datum far out)
        assert not np.isnan(out).any() and not (out == np.inf).any(), out


# ---------------------------------------------------------------------------- what the battery found
def test_what_the_battery_found(run, model, work):
    """Cases the battery found at FGM_FUZZ_SCALE=8, kept as plain regression tests."""
    d = case_dir(work)
    # a NUL in a path on the command line (no file name may hold one): a usage error
    res = run([*TINY, "--out", d / "runs", "--config", "\0"], d)
    assert res.returncode == 2 and "NUL character" in check_error(res, "--config")
    # a control character in an echoed name stays on the one line, escaped
    np.save(d / "ok.npy", np.zeros((3, 2), np.float32))
    check_error(run(["encode", model[0], d / "ok.npy", "-o", "\r"], d), "unsupported output \\r")
    # a .npy whose header is not a Python literal (np.load raises tokenize's TokenError)
    header = b"\x93NUMPY\x01\x00v\x00\x84'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }" + b" " * 58 + b"\n"
    (d / "x.npy").write_bytes(header + bytes(24))
    for target in model:
        check_error(run(["score", target, d / "x.npy", "--device", "cpu"], d), "x.npy", "TokenError")
    check_error(run([*TINY_NETS, "--out", d / "runs", "--dataset", "array", "--set",
                     f'data.options.path="{d / "x.npy"}"'], d), "not a valid NumPy file")
    # a graph whose metadata is not UTF-8 after a flipped byte
    exp = d / "exp"
    shutil.copytree(model[1], exp)
    graph = bytearray((exp / "density.onnx").read_bytes())
    at = graph.index(b"fgm.role")
    graph[at + 14] ^= 0xFF  # inside the metadata entries' text
    (exp / "density.onnx").write_bytes(bytes(graph))
    manifest = json.loads((exp / "manifest.json").read_text())  # recorded, so only the load can object
    manifest["files"]["density.onnx"] = hashlib.sha256(bytes(graph)).hexdigest()
    (exp / "manifest.json").write_text(json.dumps(manifest))
    check_error(run(["score", exp, d / "ok.npy", "--density", "--device", "cpu"], d), "cannot load", "density.onnx")
    # a float64 datum beyond float32's range: one line, not numpy's overflow warning on stderr
    (d / "far.csv").write_text("0.0,3.4028235677973366e+38\n")
    check_error(run(["score", model[1], d / "far.csv", "--device", "cpu"], d), "overflow float32")
    assert not (d / "runs").exists()
