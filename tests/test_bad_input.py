"""Bad input through the ``fgm`` command: one clear error line, a non-zero exit, no traceback
(unless ``--debug``) and no half-written run or export directory.

Each case runs the console entry point (``fgm = fgm_core.cli:main``) in a fresh process with
cwd = a temporary directory, its own stdout/stderr files and FGM_NO_PROGRESS=1. Starting a
Python that imports torch costs ~3 s on the CI machine, so the cases run in processes forked
from one server that has imported ``fgm_core.cli`` once (same entry point, real exit status and
real file descriptors); ``test_forked_runner_matches_the_console_script`` checks that a sample
of cases prints the same through the installed ``fgm`` script, and the ``--debug`` tests use
the script itself.

Also here: property-based tests (hypothesis) of configuration parsing. The divergence
identities (Fenchel-Young equality, conjugate upper bound, custom-formula checks) have their
hypothesis tests in tests/test_divergences.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fgm_core as fgm
from fgm_core.config import FGMConfig, build_config, dump_toml, parse_override, parse_value, tomllib
from fgm_core.errors import FGMError

FGM = Path(sys.executable).parent / "fgm"
PROFILE = settings(deadline=None, max_examples=40, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])

SERVER = r'''
import json, os, signal, sys, traceback
from fgm_core.cli import main

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(300)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                f = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["fgm", *req["argv"]]
            try:
                main(req["argv"])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()  # what the console script would do with an uncaught error
                code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
'''


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FGM_")}
    env.update(FGM_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


class Result:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.returncode, self.stdout, self.stderr = rc, out, err


class Runner:
    """``fgm ARGV`` in a process forked from a server that imported the CLI once."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=clean_env(), cwd=tmp, text=True)

    def __call__(self, argv: list[str], cwd: Path) -> Result:
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        req = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": clean_env(), "stdout": str(out),
               "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the fgm runner died"
        return Result(json.loads(reply)["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def script(argv: list[str], cwd: Path) -> Result:
    """The installed ``fgm`` console script itself."""
    p = subprocess.run([str(FGM), *map(str, argv)], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                       timeout=300)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(tmp_path_factory.mktemp("runner"))
    yield r
    r.close()


def check_error(res: Result, *needles: str) -> str:
    """Exactly one non-empty stderr line, ``fgm: error: ...`` naming the problem; non-zero exit."""
    assert res.returncode != 0, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("fgm: error: "), line
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in line, (n, line)
    return line


def no_runs(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))


# --------------------------------------------------------------------------- shared inputs
TRAIN = ["train", "-q", "--set", "run.threads=1", "--set", "run.tensorboard=false", "--set", 'run.device="cpu"']


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Bad (and a few good) data files."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    good = rng.normal(size=(40, 2)).astype(np.float32)
    np.save(d / "good.npy", good)
    np.save(d / "empty.npy", np.zeros((0, 2), np.float32))
    np.save(d / "weird.npy", np.zeros((10, 2, 2, 2, 2), np.float32))
    np.save(d / "scalar.npy", np.float32(3.0))
    np.save(d / "strings.npy", np.array([["a", "b"]] * 10))
    nan = good.copy()
    nan[3, 1] = np.nan
    np.save(d / "nan.npy", nan)
    inf = good.copy()
    inf[5, 0] = np.inf
    np.save(d / "inf.npy", inf)
    obj = np.empty(4, dtype=object)
    obj[:] = [{"a": 1}, {"b": 2}, None, 3]
    np.save(d / "object.npy", obj, allow_pickle=True)
    (d / "zero-bytes.npy").write_bytes(b"")
    (d / "cut.npy").write_bytes((d / "good.npy").read_bytes()[:70])
    (d / "folder.npy").mkdir()
    (d / "no-access.npy").write_bytes((d / "good.npy").read_bytes())
    os.chmod(d / "no-access.npy", 0)
    np.save(d / "three-features.npy", np.zeros((4, 3), np.float32))
    (d / "empty-idx").mkdir()
    (d / "broken.toml").write_text("[run\nsteps = 10\n")
    (d / "typo.toml").write_text("[optim]\nlrr = 0.1\n")
    (d / "mixed-images").mkdir()
    from PIL import Image

    for i, (w, h) in enumerate([(8, 8), (12, 7), (5, 9), (16, 16), (10, 6), (7, 11)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / "mixed-images" / f"{i}.png")
    (d / "bad-images").mkdir()
    shutil.copy(d / "mixed-images" / "0.png", d / "bad-images" / "0.png")
    shutil.copy(d / "mixed-images" / "1.png", d / "bad-images" / "1.png")
    (d / "bad-images" / "2.png").write_bytes(b"not a png at all")
    yield d
    os.chmod(d / "no-access.npy", 0o644)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run (in-process) and its ONNX export: (run dir, export dir)."""
    work = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    try:
        run = fgm.train({
            "data": {"dataset": "ring8", "options": {"n_train": 256, "n_test": 64}},
            "model": {"latent_dim": 2, "options": {"hidden": 16, "depth": 1}},
            "optim": {"batch_size": 32},
            "run": {"steps": 4, "checkpoint_every": 4, "threads": 1, "device": "cpu", "tensorboard": False,
                    "progress": False, "eval_samples": 64, "out_dir": str(work / "runs"), "name": "tiny"},
        }, progress=False)
    finally:
        torch.set_num_threads(threads)
    exp = work / "export"
    fgm.export(run, exp)
    return run.path, exp


# --------------------------------------------------------------------------- unknown names
UNKNOWN = {
    "divergence": (["--divergence", "klx"], ["unknown divergence 'klx'", "did you mean 'kl'?", "reverse_kl"]),
    "architecture": (["--architecture", "mlpp"], ["unknown architecture 'mlpp'", "did you mean 'mlp'?", "dcgan"]),
    "dataset": (["--dataset", "ring9"], ["unknown dataset 'ring9'", "did you mean 'ring8'?", "swissroll"]),
    "dataset-far": (["--dataset", "cifar"], ["unknown dataset 'cifar'", "available: array"]),
    "plugin": (["--plugin", "mlq"], ["unknown plugin 'mlq'", "did you mean 'mlp'?", "divergences"]),
    "plugin-path": (["--plugin", "missing_plugin.py"], ["missing_plugin.py", "not found"]),
    "critic": (["--critic", "dense"], []),  # a click choice: checked separately below
}


@pytest.mark.parametrize("case", [c for c in UNKNOWN if c != "critic"])
def test_unknown_names(case, runner, tmp_path):
    args, needles = UNKNOWN[case]
    res = runner([*TRAIN, "--out", tmp_path / "runs", *args], tmp_path)
    check_error(res, *needles)
    no_runs(tmp_path / "runs")


def test_unknown_exporter(runner, trained, tmp_path):
    run, _ = trained
    res = runner(["export", run, "--format", "nope", "-o", tmp_path / "exp"], tmp_path)
    check_error(res, "unknown exporter 'nope'", "available: onnx")
    res = runner(["export", run, "--format", "onx", "-o", tmp_path / "exp"], tmp_path)
    check_error(res, "unknown exporter 'onx'", "did you mean 'onnx'?")
    assert not (tmp_path / "exp").exists()


def test_unknown_critic_form_is_a_usage_error(runner, tmp_path):
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--critic", "dense"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "'dense' is not one of 'density', 'joint', 'marginal'" in res.stderr
    no_runs(tmp_path / "runs")


# --------------------------------------------------------------------------- configuration
CONFIG = {
    "negative-batch": (["--set", "optim.batch_size=-1"], ["'optim.batch_size'", "greater than or equal to 1", "-1"]),
    "zero-steps": (["--set", "run.steps=0"], ["'run.steps'", "greater than or equal to 1"]),
    "zero-steps-flag": (["--steps", "0"], ["'run.steps'"]),
    "latent-0": (["--set", "model.latent_dim=0"], ["'model.latent_dim'", "greater than or equal to 1"]),
    "latent-huge": (["--set", "model.latent_dim=100000"], ["'model.latent_dim'", "less than or equal to 4096"]),
    "lr-text": (["--set", "optim.lr=abc"], ["'optim.lr'", "valid number", "'abc'"]),
    "lr-negative": (["--set", "optim.lr=-0.1"], ["'optim.lr'", "greater than 0"]),
    "lr-nan": (["--set", "optim.lr=nan"], ["'optim.lr'"]),
    "seed-float": (["--set", "run.seed=1.5"], ["'run.seed'", "valid integer", "1.5"]),
    "seed-text": (["--set", 'run.seed="x"'], ["'run.seed'", "valid integer"]),
    "steps-bool": (["--set", "run.steps=true"], ["'run.steps'", "not true/false"]),
    "lr-bool": (["--set", "optim.lr=false"], ["'optim.lr'", "not true/false"]),
    "dataset-number": (["--set", "data.dataset=3"], ["'data.dataset'", "valid string"]),
    "options-not-table": (["--set", "model.options=5"], ["'model.options'", "valid dictionary"]),
    "section-not-table": (["--set", "optim=3"], ["'optim'", "valid dictionary"]),
    "betas-out-of-range": (["--set", "optim.betas=[0.5, 1.5]"], ["'optim.betas'", "[0, 1)"]),
    "bad-choice": (["--set", 'optim.optimizer="adagrad"'], ["'optim.optimizer'", "'adam'"]),
    "bad-device": (["--device", "tpu"], ["'run.device'", "auto, cpu, cuda or cuda:N"]),
    "unknown-key": (["--set", "optim.lrr=1"], ["unknown key 'optim.lrr'", "allowed here:", "lr,"]),
    "unknown-section": (["--set", "optimizer.lr=1"], ["unknown key 'optimizer'", "allowed here: data, model"]),
    "no-equals": (["--set", "optim.lr"], ["override 'optim.lr' has no '='"]),
    "empty-key": (["--set", "=3"], ["empty key"]),
    "toml-syntax": (["--config", "{d}/broken.toml"], ["broken.toml is not valid TOML", "line 1"]),
    "toml-unknown-key": (["--config", "{d}/typo.toml"], ["typo.toml: unknown key 'optim.lrr'"]),
    "config-missing": (["--config", "{d}/nowhere.toml"], ["config file", "nowhere.toml not found"]),
    "custom-not-convex": (["--divergence", "custom", "--set", 'divergence.params={formula="-u*log(u)"}'],
                          ["-u*log(u)", "not convex"]),
    "custom-f1-not-0": (["--divergence", "custom", "--set", 'divergence.params={formula="u*log(u)+1"}'],
                        ["f(1) = 1 but must be 0"]),
    "custom-unsafe": (["--divergence", "custom", "--set", "divergence.params={formula=\"__import__('os')\"}"],
                      ["'__import__' is not allowed"]),
    "custom-no-formula": (["--divergence", "custom"], ["formula"]),
    "custom-unknown-param": (["--divergence", "custom", "--set", 'divergence.params={formula="u*log(u)", ofset=1}'],
                             ["'ofset'"]),
    "kl-with-param": (["--divergence", "kl", "--set", "divergence.params={alpha=2}"], ["divergence 'kl'", "'alpha'"]),
    "alpha-1": (["--divergence", "alpha", "--set", "divergence.params={alpha=1}"], ["alpha", "kl"]),
}


@pytest.mark.parametrize("case", list(CONFIG))
def test_invalid_configuration(case, runner, files, tmp_path):
    args, needles = CONFIG[case]
    args = [a.replace("{d}", str(files)) for a in args]
    res = runner([*TRAIN, "--out", tmp_path / "runs", *args], tmp_path)
    check_error(res, *needles)
    no_runs(tmp_path / "runs")


def test_bad_architecture_options_and_shapes(runner, tmp_path):
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--set", "model.options={hidden=0}"], tmp_path)
    check_error(res, "hidden")
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--set", "model.options={hiden=8}"], tmp_path)
    check_error(res, "hiden")
    res = runner([*TRAIN, "--out", tmp_path / "runs", "-a", "dcgan"], tmp_path)
    check_error(res, "dcgan")  # image architecture on 2-D vectors
    no_runs(tmp_path / "runs")


# --------------------------------------------------------------------------- data
def _array(name: str, d: Path, **opts) -> list[str]:
    table = ", ".join([f'path="{d / name}"', *[f"{k}={json.dumps(v)}" for k, v in opts.items()]])
    return ["--dataset", "array", "--set", f"data.options={{{table}}}"]


DATA = {
    "empty": ("empty.npy", ["empty.npy", "is empty (shape (0, 2))"]),
    "weird-shape": ("weird.npy", ["weird.npy", "has shape (10, 2, 2, 2, 2)"]),
    "scalar": ("scalar.npy", ["scalar.npy", "empty"]),
    "strings": ("strings.npy", ["strings.npy", "non-numeric dtype <U1"]),
    "nan": ("nan.npy", ["nan.npy", "1 NaN", "index (3, 1)"]),
    "inf": ("inf.npy", ["inf.npy", "1 inf", "index (5, 0)"]),
    "object-array": ("object.npy", ["object.npy", "pickled Python objects", "never loaded"]),
    "zero-bytes": ("zero-bytes.npy", ["zero-bytes.npy", "is empty (0 bytes)"]),
    "truncated": ("cut.npy", ["cut.npy", "not a valid NumPy file"]),
    "missing": ("absent.npy", ["absent.npy", "does not exist"]),
    "a-directory": ("folder.npy", ["folder.npy", "is not a file"]),
    "no-permission": ("no-access.npy", ["no-access.npy", "permission denied"]),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_array_data(case, runner, files, tmp_path):
    if case == "no-permission" and os.geteuid() == 0:
        pytest.skip("root reads files with mode 000")
    name, needles = DATA[case]
    res = runner([*TRAIN, "--out", tmp_path / "runs", *_array(name, files)], tmp_path)
    check_error(res, "dataset 'array'", *needles)
    no_runs(tmp_path / "runs")


def test_bad_array_options(runner, files, tmp_path):
    res = runner([*TRAIN, "--out", tmp_path / "runs", *_array("good.npy", files, shape=[3])], tmp_path)
    check_error(res, "option shape [3]")
    res = runner([*TRAIN, "--out", tmp_path / "runs", *_array("good.npy", files, colour=1)], tmp_path)
    check_error(res, "colour")
    no_runs(tmp_path / "runs")


def test_missing_idx_files(runner, files, tmp_path):
    opts = f'data.options={{path="{files / "empty-idx"}"}}'
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--dataset", "idx", "--set", opts], tmp_path)
    check_error(res, "dataset 'idx'", "empty-idx", "train-images-idx3-ubyte")
    opts = f'data.options={{path="{files / "no-such-dir"}"}}'
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--dataset", "idx", "--set", opts], tmp_path)
    check_error(res, "no-such-dir", "does not exist")
    no_runs(tmp_path / "runs")


def test_images_of_mixed_sizes_are_resized_and_train(runner, files, tmp_path):
    """images.py documents that every image is resized to (channels, size, size): mixed sizes are fine."""
    opts = f'data.options={{path="{files / "mixed-images"}", size=8, channels=1}}'
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--name", "mixed", "--dataset", "images", "--set", opts,
                  "--steps", "2", "--set", "data.test_fraction=0.34", "--set", "optim.batch_size=4",
                  "--set", "model.options={hidden=8, depth=1}", "--set", "model.latent_dim=2",
                  "--set", "run.eval_samples=8"], tmp_path)
    assert res.returncode == 0, res.stderr
    info = json.loads((tmp_path / "runs" / "mixed" / "data.json").read_text())
    assert info["shape"] == [1, 8, 8]


def test_images_with_an_unreadable_file(runner, files, tmp_path):
    opts = f'data.options={{path="{files / "bad-images"}", size=8}}'
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--dataset", "images", "--set", opts], tmp_path)
    check_error(res, "dataset 'images'", "2.png", "not a readable image")
    opts = f'data.options={{path="{files / "empty-idx"}"}}'
    res = runner([*TRAIN, "--out", tmp_path / "runs", "--dataset", "images", "--set", opts], tmp_path)
    check_error(res, "no images")
    no_runs(tmp_path / "runs")


def test_directory_without_permission(runner, files, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root lists directories with mode 000")
    locked = tmp_path / "locked"
    shutil.copytree(files / "mixed-images", locked)
    os.chmod(locked, 0)
    try:
        opts = f'data.options={{path="{locked}", size=8}}'
        res = runner([*TRAIN, "--out", tmp_path / "runs", "--dataset", "images", "--set", opts], tmp_path)
        check_error(res, "permission denied")
    finally:
        os.chmod(locked, stat.S_IRWXU)
    no_runs(tmp_path / "runs")


def test_output_directory_is_a_file(runner, tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    for out in (tmp_path / "runs", tmp_path / "runs" / "sub"):
        res = runner([*TRAIN, "--out", out, "--steps", "1"], tmp_path)
        check_error(res, f"{out} (or a folder above it) is not a directory")
    assert (tmp_path / "runs").read_text() == "not a directory"


# --------------------------------------------------------------------------- runtime inputs
RUNTIME = {
    "three-features": ("three-features.npy", ["input has shape (4, 3)", "expects (N, 2)", "rows of 2 values"]),
    "strings": ("strings.npy", ["dtype <U1", "expected numbers"]),
    "nan": ("nan.npy", ["NaN or inf", "row 3"]),
    "inf": ("inf.npy", ["NaN or inf", "row 5"]),
    "empty": ("empty.npy", ["empty (0 rows)"]),
    "object-array": ("object.npy", ["object.npy", "allow_pickle=False"]),
    "zero-bytes": ("zero-bytes.npy", ["zero-bytes.npy", "empty or truncated"]),
    "missing": ("absent.npy", ["absent.npy", "not found"]),
    "a-directory": ("folder.npy", ["folder.npy", "is a directory"]),
    "unsupported": ("broken.toml", ["unsupported data file broken.toml"]),
}


@pytest.mark.parametrize("where", ["run", "export"])
@pytest.mark.parametrize("case", list(RUNTIME))
def test_score_rejects_bad_input(case, where, runner, trained, files, tmp_path):
    target = trained[0] if where == "run" else trained[1]
    name, needles = RUNTIME[case]
    res = runner(["score", target, files / name, "--device", "cpu", "-o", tmp_path / "scores.npy"], tmp_path)
    check_error(res, *needles)
    assert not (tmp_path / "scores.npy").exists()


@pytest.mark.parametrize("where", ["run", "export"])
def test_encode_and_sample_reject_bad_input(where, runner, trained, files, tmp_path):
    target = trained[0] if where == "run" else trained[1]
    check_error(runner(["encode", target, files / "three-features.npy", "--device", "cpu"], tmp_path),
                "input has shape (4, 3)")
    check_error(runner(["sample", target, "-n", "0", "-o", tmp_path / "s.npy", "--device", "cpu"], tmp_path),
                "got 0", "use -n 1 or more")
    check_error(runner(["sample", target, "-n", "-3", "-o", tmp_path / "s.npy", "--device", "cpu"], tmp_path),
                "got -3")
    check_error(runner(["sample", target, "-n", "5", "-o", tmp_path / "out.txt", "--device", "cpu"], tmp_path),
                "unsupported output out.txt", "samples.npy")
    check_error(runner(["score", target, files / "good.npy", "-k", "0", "--device", "cpu"], tmp_path), "k must be")
    assert not list(tmp_path.glob("s.npy")) and not (tmp_path / "out.txt").exists()


def test_not_a_run_or_export_directory(runner, tmp_path):
    check_error(runner(["sample", tmp_path / "nowhere", "-o", tmp_path / "s.npy"], tmp_path), "nowhere", "not found")
    (tmp_path / "empty").mkdir()
    check_error(runner(["sample", tmp_path / "empty", "-o", tmp_path / "s.npy"], tmp_path), "fgm.json")
    check_error(runner(["train", "--resume", tmp_path / "empty"], tmp_path), "cannot resume", "config.json")
    check_error(runner(["export", "--runs", tmp_path / "empty"], tmp_path), "no trained runs")


# --------------------------------------------------------------------------- --debug and the real script
def test_debug_shows_the_traceback(files, tmp_path):
    res = script(["--debug", *TRAIN, "--out", tmp_path / "runs", *_array("nan.npy", files)], tmp_path)
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("fgm: error: dataset 'array'")
    no_runs(tmp_path / "runs")


def test_forked_runner_matches_the_console_script(runner, trained, files, tmp_path):
    cases = [
        [*TRAIN, "--out", tmp_path / "runs", "--divergence", "klx"],
        [*TRAIN, "--out", tmp_path / "runs", "--set", "optim.lrr=1"],
        ["score", trained[0], files / "three-features.npy"],
        ["score", trained[1], files / "strings.npy", "--device", "cpu"],
    ]
    for argv in cases:
        a, b = runner(argv, tmp_path), script(argv, tmp_path)
        assert (a.returncode, a.stderr) == (b.returncode, b.stderr), argv
        check_error(b)
    no_runs(tmp_path / "runs")


# --------------------------------------------------------------------------- property-based: config parsing
SECTION_VALUES = {
    ("run", "steps"): st.integers(1, 10**9),
    ("run", "seed"): st.integers(0, 2**63 - 1),
    ("run", "checkpoint_every"): st.integers(1, 10**6),
    ("run", "name"): st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"], exclude_characters="/\\"),
                             min_size=1, max_size=20).filter(lambda s: s.strip() not in ("", ".", "..")),
    ("run", "progress"): st.booleans(),
    ("optim", "lr"): st.floats(min_value=1e-12, max_value=10.0, allow_nan=False),
    ("optim", "batch_size"): st.integers(1, 1 << 20),
    ("optim", "betas"): st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)),
    ("optim", "grad_clip"): st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e6)),
    ("optim", "optimizer"): st.sampled_from(["adam", "adamw", "sgd", "rmsprop"]),
    ("model", "latent_dim"): st.integers(1, 4096),
    ("model", "sigma"): st.floats(min_value=1e-6, max_value=100.0),
    ("model", "generator"): st.sampled_from(["gaussian", "deterministic"]),
    ("critic", "form"): st.sampled_from(["density", "joint", "marginal"]),
    ("critic", "n_critic"): st.integers(1, 100),
    ("divergence", "max_exp"): st.floats(min_value=1e-3, max_value=80.0),
    ("data", "test_fraction"): st.floats(min_value=1e-6, max_value=0.999),
}
OPTION_VALUE = st.recursive(
    st.one_of(st.integers(-(2**62), 2**62), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
              st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)
OPTION_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,10}", fullmatch=True)
ANY_KEY = st.one_of(OPTION_KEY, st.text(min_size=0, max_size=8))  # quoted keys: dots, spaces, non-ASCII


@st.composite
def config_dicts(draw) -> dict:
    data: dict = {}
    for (section, key), strat in SECTION_VALUES.items():
        if draw(st.booleans()):
            data.setdefault(section, {})[key] = draw(strat)
    if draw(st.booleans()):
        data.setdefault("model", {})["options"] = draw(st.dictionaries(OPTION_KEY, OPTION_VALUE, max_size=4))
    if draw(st.booleans()):
        data.setdefault("data", {})["options"] = draw(st.dictionaries(ANY_KEY, OPTION_VALUE, max_size=4))
    return data


def _fmt_value(v) -> str:
    from fgm_core.config import _fmt

    return _fmt(v)


@PROFILE
@given(config_dicts())
def test_config_round_trips_through_toml(data):
    cfg = build_config(data)
    text = dump_toml(cfg)
    again = build_config(tomllib.loads(text))
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


@PROFILE
@given(config_dicts())
def test_config_round_trips_through_set_overrides(data):
    """Every value written back as ``--set section.key=<TOML>`` gives the same configuration."""
    cfg = build_config(data)
    overrides = [f"{section}.{key}={_fmt_value(v)}" for section, values in data.items() for key, v in values.items()
                 if v is not None]
    assert build_config(None, overrides) == build_config({s: {k: v for k, v in vs.items() if v is not None}
                                                          for s, vs in data.items()})
    assert cfg == build_config(cfg.to_dict())


@PROFILE
@given(st.sampled_from(sorted(SECTION_VALUES)), st.data())
def test_parse_override_nests_the_value(key, data):
    value = data.draw(SECTION_VALUES[key])
    if value is None:
        return
    section, name = key
    parsed = parse_override(f"{section}.{name}={_fmt_value(value)}")
    expect = list(value) if isinstance(value, tuple) else value
    assert parsed == {section: {name: expect}}


@PROFILE
@given(st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12))
def test_parse_value_keeps_bare_words(word):
    v = parse_value(word)
    if isinstance(v, str):
        assert v == word


INVALID = {
    "optim.batch_size": st.one_of(st.integers(max_value=0), st.booleans(), st.floats(0.01, 100).filter(lambda x: x != int(x)),
                                  st.text(alphabet="abcxyz", min_size=1, max_size=5)),
    "run.steps": st.one_of(st.integers(max_value=0), st.booleans(), st.text(alphabet="abc", min_size=1, max_size=4)),
    "model.latent_dim": st.one_of(st.integers(max_value=0), st.integers(min_value=4097, max_value=10**12)),
    "optim.lr": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(float("nan")), st.booleans(),
                          st.text(alphabet="abcxyz", min_size=1, max_size=5), st.lists(st.floats(0.1, 1), max_size=2)),
    "run.seed": st.one_of(st.floats(0.01, 1e6).filter(lambda x: x != int(x)), st.booleans(), st.lists(st.integers(), max_size=2)),
    "data.test_fraction": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(float("nan"))),
    "critic.form": st.text(max_size=8).filter(lambda s: s not in ("density", "joint", "marginal")),
    "optim.betas": st.tuples(st.floats(1.0, 10.0), st.floats(0, 0.9)),
}


@PROFILE
@given(st.sampled_from(sorted(INVALID)), st.data())
def test_invalid_values_always_name_their_key(key, data):
    value = data.draw(INVALID[key])
    section, name = key.split(".")
    with pytest.raises(FGMError) as e:
        build_config({section: {name: value}})
    assert f"'{key}'" in e.value.message and "\n" not in str(e.value)
    if not (isinstance(value, float) and value != value) and not isinstance(value, (tuple, list)):
        with pytest.raises(FGMError) as e2:  # the same through --set
            build_config(None, [f"{key}={_fmt_value(value)}"])
        assert f"'{key}'" in e2.value.message


@PROFILE
@given(st.sampled_from(["data", "model", "divergence", "critic", "optim", "run"]), OPTION_KEY)
def test_unknown_keys_are_named_with_the_allowed_ones(section, key):
    allowed = FGMConfig.model_fields[section].annotation.model_fields
    if key in allowed:
        return
    with pytest.raises(FGMError) as e:
        build_config(None, [f"{section}.{key}=1"])
    assert f"unknown key '{section}.{key}'" in e.value.message
    assert all(k in e.value.hint for k in allowed)
