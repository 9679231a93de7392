"""The promises of the README's "Promises" section, each checked as the user meets it.

- SIGINT (Ctrl-C) and SIGTERM: finish the step, write a checkpoint, one line, exit 130 / 143;
  ``--resume`` then ends bit-identical to an uninterrupted run.
- ``fgm compare`` interrupted: no further runs, a non-zero exit, and a report that marks the
  interrupted run incomplete with the steps it really trained.
- Run directories are locked while written; ``metrics.jsonl`` after a kill and a resume has
  unique, increasing steps and only whole lines.
- ``--resume --set``: the allowed keys are applied and recorded, every other key is refused.
- A run that never checkpointed (killed, full disk) is taken over by a new run of the same
  name or restarted by ``--resume``; a full disk names the file and the last checkpoint.
- Unbounded requests and input files that are not regular files are refused before work.

Signals that must reach a real process use the ``fgm`` console script in a subprocess;
everything else runs in-process through ``fgm_core.cli.main``. Tiny ring8 runs, one thread.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reliability import FGM, assert_bit_identical, cli, env, one_error_line, tiny

import fgm_core as fgm
import fgm_core.storage as storage
from fgm_core.config import build_config, dump_toml

STEPS = 100


@pytest.fixture(autouse=True)
def _threads():
    """In-process runs set torch to one thread (run.threads = 1); give the others theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("promises")


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """An uninterrupted STEPS-step run: its final weights."""
    n = torch.get_num_threads()
    try:
        return fgm.train(tiny(work / "ref", "reference", steps=STEPS), progress=False).path / "model.safetensors"
    finally:
        torch.set_num_threads(n)


def toml(path: Path, **kw) -> Path:
    path.write_text(dump_toml(build_config(tiny(path.parent / "runs", **kw))))
    return path


def start(config: Path, name: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(FGM), "train", "-c", str(config), "--name", name, "-q"], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, path: Path, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"fgm exited with {proc.returncode} early:\n{proc.communicate()[1]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.005)


def one_line(err: str) -> str:
    """The single line an honoured signal prints (no traceback, nothing else)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fgm: ") and "Traceback" not in err, err
    return lines[0]


def metric_rows(run: Path) -> list[dict]:
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line parses


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_exits_and_resume_matches(sig, status, reference, tmp_path, capsys):
    run = tmp_path / "runs" / "sig"
    proc = start(toml(tmp_path / "t.toml", steps=STEPS), "sig", tmp_path)
    wait_for(proc, run / "checkpoint.json")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    line = one_line(err)
    stopped = json.loads((run / "checkpoint.json").read_text())["step"]
    assert f"interrupted ({sig.name}) at step {stopped};" in line and "--resume" in line
    assert 0 < stopped < STEPS and not (run / "model.safetensors").exists(), "the signal came too late"
    if sig == signal.SIGINT:
        return  # resuming after Ctrl-C: tests/test_reliability.py
    code, err = cli(capsys, "train", "--resume", str(run), "-q")
    assert code == 0, err
    assert_bit_identical(run / "model.safetensors", reference)


def test_sigterm_before_the_first_checkpoint_leaves_a_resumable_run(reference, tmp_path, capsys, monkeypatch):
    """The signal lands while the run files are written: the run stops at step 0 with a
    checkpoint there, and --resume trains it to the same weights as an uninterrupted run."""
    from fgm_core.trainer import Trainer

    write = Trainer._write_run_files

    def then_terminated(self):
        write(self)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_write_run_files", then_terminated)
    code, err = cli(capsys, "train", "-c", str(toml(tmp_path / "t.toml", steps=STEPS)), "--name", "early", "-q")
    assert code == 143 and "interrupted (SIGTERM) at step 0" in err, err
    monkeypatch.undo()
    run = tmp_path / "runs" / "early"
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 0
    code, err = cli(capsys, "train", "--resume", str(run), "-q")
    assert code == 0, err
    assert_bit_identical(run / "model.safetensors", reference)


def never_checkpointed_run(tmp_path: Path, name: str) -> Path:
    """What a SIGKILL before the first checkpoint leaves: the run files, a metrics row, a
    partial line, an atomic write cut short and a checkpoint's weights without its pointer."""
    cfg = build_config(tiny(tmp_path / "runs", name, steps=STEPS))
    run = tmp_path / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "fgm.json").write_text(json.dumps({"format_version": storage.FORMAT_VERSION, "kind": "run"}))
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "config.toml").write_text(dump_toml(cfg))
    (run / "metrics.jsonl").write_text('{"step": 10, "lr": 0.001}\n{"step": 1')
    (run / ".data.json.x1y2.tmp").write_bytes(b'{"sha')
    (run / "checkpoints" / "step-00000020.model.safetensors").write_bytes(b"\x10\x00")
    return run


def test_a_run_that_never_checkpointed_is_taken_over_by_the_same_name(reference, tmp_path, capsys):
    run = never_checkpointed_run(tmp_path, "again")
    code, err = cli(capsys, "train", "-c", str(toml(tmp_path / "t.toml", steps=STEPS)), "--name", "again", "-q")
    assert code == 0, err
    assert_bit_identical(run / "model.safetensors", reference)
    assert [r["step"] for r in metric_rows(run)] == list(range(50, STEPS + 1, 50))  # log_every 50, nothing old
    assert not (run / ".data.json.x1y2.tmp").exists()


def test_a_run_that_never_checkpointed_restarts_on_resume(reference, tmp_path, capsys):
    run = never_checkpointed_run(tmp_path, "restart")
    code, err = cli(capsys, "train", "--resume", str(run), "-q")
    assert code == 0, err
    assert_bit_identical(run / "model.safetensors", reference)
    assert [r["step"] for r in metric_rows(run)] == list(range(50, STEPS + 1, 50))


def test_a_folder_with_foreign_files_is_never_taken_over(tmp_path, capsys):
    run = never_checkpointed_run(tmp_path, "mine")
    (run / "notes.txt").write_text("my notes")
    code, err = cli(capsys, "train", "-c", str(toml(tmp_path / "t.toml")), "--name", "mine", "-q")
    assert code == 1 and "already exists" in one_error_line(err)
    assert (run / "notes.txt").read_text() == "my notes" and (run / "config.json").exists()


# --------------------------------------------------------------------------- full disk
def full_disk_at(monkeypatch, name: str) -> None:
    """The atomic writer fails with ENOSPC for the first file called ``name``."""
    real = storage.atomic_write_bytes

    def write(path, data):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(storage, "atomic_write_bytes", write)


def test_full_disk_in_a_checkpoint_names_the_file_and_keeps_the_last_one(reference, tmp_path, capsys, monkeypatch):
    full_disk_at(monkeypatch, "step-00000040.state.safetensors")
    code, err = cli(capsys, "train", "-c", str(toml(tmp_path / "t.toml", steps=STEPS)), "--name", "full", "-q")
    run = tmp_path / "runs" / "full"
    line = one_error_line(err)
    assert code == 1
    assert f"No space left on device: {run / 'checkpoints' / 'step-00000040.state.safetensors'}" in line
    assert "the last good checkpoint is step 20" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000020.model.safetensors", "step-00000020.state.json", "step-00000020.state.safetensors"]
    monkeypatch.undo()
    code, err = cli(capsys, "train", "--resume", str(run), "-q")
    assert code == 0, err
    assert_bit_identical(run / "model.safetensors", reference)


def test_full_disk_while_the_run_files_are_written_leaves_nothing(tmp_path, capsys, monkeypatch):
    full_disk_at(monkeypatch, "data.json")
    config = toml(tmp_path / "t.toml", steps=40)
    code, err = cli(capsys, "train", "-c", str(config), "--name", "start", "-q")
    assert code == 1
    line = one_error_line(err)
    assert f"No space left on device: {tmp_path / 'runs' / 'start' / 'data.json'}" in line
    assert "no checkpoint was written" in line
    assert not (tmp_path / "runs" / "start").exists()
    monkeypatch.undo()
    assert cli(capsys, "train", "-c", str(config), "--name", "start", "-q")[0] == 0


# --------------------------------------------------------------------------- locking and metrics
def test_concurrent_writers_are_refused_and_metrics_survive_kill_and_resume(tmp_path, capsys):
    config = toml(tmp_path / "t.toml", steps=100_000, every=20)
    run = tmp_path / "runs" / "locked"
    proc = start(config, "locked", tmp_path)
    try:
        wait_for(proc, run / "checkpoint.json")
        code, err = cli(capsys, "train", "--resume", str(run), "--steps", "100", "-q")
        assert code == 1
        assert f"is being written by another fgm process (pid {proc.pid})" in one_error_line(err)
        code, err = cli(capsys, "train", "-c", str(config), "--name", "locked", "-q")
        assert code == 1 and "already exists" in one_error_line(err)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    stopped = json.loads((run / "checkpoint.json").read_text())["step"]
    with open(run / "metrics.jsonl", "a") as f:  # a row logged after the checkpoint, then a kill mid-line
        f.write(json.dumps({"step": stopped + 10, "lr": 1e-3}) + '\n{"loss_generator": 1.5, "st')
    end = stopped + 120
    code, err = cli(capsys, "train", "--resume", str(run), "--steps", str(end), "-q")  # the dead holder's lock is gone
    assert code == 0, err
    steps = [r["step"] for r in metric_rows(run)]
    assert steps == list(range(50, end + 1, 50)) + ([end] if end % 50 else [])


# --------------------------------------------------------------------------- resume with --set
@pytest.fixture
def stopped_run(tmp_path, capsys) -> Path:
    """A 40-step run resumed from its step-40 checkpoint to more steps in the tests."""
    code, err = cli(capsys, "train", "-c", str(toml(tmp_path / "t.toml", steps=40, every=20)), "--name", "r", "-q")
    assert code == 0, err
    return tmp_path / "runs" / "r"


@pytest.mark.parametrize("setting, key", [
    ("data.dataset=grid25", "data.dataset"),
    ("model.latent_dim=3", "model.latent_dim"),
    ("model.options.hidden=32", "model.options.hidden"),
    ("divergence.name=js", "divergence.name"),
    ("optim.batch_size=32", "optim.batch_size"),
    ("run.seed=1", "run.seed"),
    ('run.name="elsewhere"', "run.name"),  # --name or --out only to name the run directory itself
])
def test_resume_refuses_to_change_what_the_checkpoint_holds(setting, key, stopped_run, capsys):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    code, err = cli(capsys, "train", "--resume", str(stopped_run), "--set", setting, "--steps", "60", "-q")
    assert code == 1
    assert one_error_line(err).startswith(f"fgm: error: cannot change {key} when resuming")
    after = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    assert after == before  # nothing recorded, nothing trained


def test_resume_applies_and_records_a_new_learning_rate_and_schedule(stopped_run, capsys):
    code, err = cli(capsys, "train", "--resume", str(stopped_run), "--steps", "200", "--set", "optim.lr=0.0003",
                    "--set", 'optim.schedule="cosine"', "-q")
    assert code == 0, err
    rows = {r["step"]: r["lr"] for r in metric_rows(stopped_run)}
    assert sorted(rows) == [40, 50, 100, 150, 200] and rows[40] == 1e-3  # the last row before the resume
    for step in (50, 100, 150, 200):  # cosine over 200 steps from 3e-4, evaluated after `step` updates
        assert rows[step] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * step / 200)), abs=1e-12)
    cfg = json.loads((stopped_run / "config.json").read_text())
    assert (cfg["optim"]["lr"], cfg["optim"]["schedule"], cfg["run"]["steps"]) == (3e-4, "cosine", 200)
    assert "lr = 0.0003" in (stopped_run / "config.toml").read_text()
    history = [json.loads(line) for line in (stopped_run / "resumes.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["from_step"] == 40
    assert history[0]["changed"] == {"optim.lr": [1e-3, 3e-4], "optim.schedule": ["constant", "cosine"],
                                     "run.steps": [40, 200]}


def test_resume_to_fewer_steps_than_trained_is_refused(stopped_run, capsys):
    code, err = cli(capsys, "train", "--resume", str(stopped_run), "--steps", "30", "-q")
    assert code == 1 and "below the checkpoint's step 40" in one_error_line(err)


def test_a_moved_run_resumes_with_out_naming_where_it_is(stopped_run, tmp_path, capsys):
    moved = tmp_path / "moved" / "r"
    moved.parent.mkdir()
    stopped_run.rename(moved)
    code, err = cli(capsys, "train", "--resume", str(moved), "--out", str(tmp_path / "moved"), "--steps", "60", "-q")
    assert code == 0, err
    assert json.loads((moved / "config.json").read_text())["run"]["out_dir"] == str(tmp_path / "moved")
    code, err = cli(capsys, "train", "--resume", str(moved), "--out", str(tmp_path / "runs"), "--steps", "80", "-q")
    assert code == 1 and "cannot change run.out_dir when resuming" in one_error_line(err)


# --------------------------------------------------------------------------- compare
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_compare_stops_and_reports_only_what_happened(sig, status, tmp_path, capsys, monkeypatch):
    from fgm_core.trainer import Trainer

    step = Trainer.train_step

    def signalled(self):
        out = step(self)
        if self.run_dir.name == "js-density-s0" and self.step == 13:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", signalled)
    base = toml(tmp_path / "t.toml", steps=30, every=10)
    code, err = cli(capsys, "compare", "--divergences", "kl,js,gan", "--seeds", "1", "-c", str(base), "-k", "4",
                    "--samples", "200", "-o", str(tmp_path / "report"), "-q")
    assert code == status, err
    line = one_line(err)
    assert "in run js-density-s0 after 13 of 30 steps; 1 of 3 runs finished" in line
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["divergence"] for r in res["runs"]] == ["kl", "js"]  # gan never started
    assert not (tmp_path / "report" / "runs" / "gan-density-s0").exists()
    cut = res["runs"][1]
    assert (cut["incomplete"], cut["steps_trained"], cut["steps_planned"]) == (True, 13, 30)
    assert "steps" not in cut and "modes_captured" not in cut  # no claim of a full, evaluated run
    assert res["interrupted"]["not_run"] == ["gan-density-s0"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"**Interrupted ({sig.name})" in report and "1 of 3 planned runs finished" in report
    assert "js (1 incomplete)" in report and "(trained 13 of 30 steps)" in report


# --------------------------------------------------------------------------- bounds and input files
def test_absurd_sample_counts_and_k_are_refused_before_any_work(stopped_run, tmp_path, capsys):
    out = tmp_path / "x.npy"
    code, err = cli(capsys, "sample", str(stopped_run), "-n", "99999999999999999999999", "-o", str(out))
    assert code == 1 and "GiB of memory, more than half of the" in one_error_line(err) and not out.exists()
    np.save(tmp_path / "d.npy", np.zeros((2, 2), np.float32))
    code, err = cli(capsys, "score", str(stopped_run), str(tmp_path / "d.npy"), "-k", "10000000000")
    assert code == 1 and "more than the 1,000,000 fgm takes" in one_error_line(err)


def test_k_above_one_call_is_split_and_gives_the_same_estimate(stopped_run):
    """K = 70,000 > 65,536 network rows of one call: the pieces combine to log mean w over
    all K draws; compared with K = 70,000 drawn in one call through the model itself."""
    from fgm_core.run import MAX_CALL_ROWS

    run = fgm.load_run(stopped_run)
    x = np.array([[1.0, 0.0]], np.float32)
    k = MAX_CALL_ROWS + 4464
    split = run.log_likelihood(x, k=k, seed=3)
    g = torch.Generator().manual_seed(3)
    xm = run.as_model_input(x)
    eps = torch.cat([torch.randn(MAX_CALL_ROWS, 1, 2, generator=g), torch.randn(4464, 1, 2, generator=g)])
    with torch.no_grad():
        whole = run.model.log_likelihood(xm, eps) + run.info.scaling.log_det(2)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-4)


def test_inputs_that_are_not_regular_files_are_refused_without_blocking(stopped_run, tmp_path, capsys):
    def alarm(signum, frame):
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    try:
        fifo = tmp_path / "rows.csv"
        os.mkfifo(fifo)
        code, err = cli(capsys, "score", str(stopped_run), str(fifo))
        assert code == 1 and one_error_line(err).endswith(
            f"cannot read data file {fifo}: it is not a regular file (a FIFO, device or socket) (give a regular file)")
        cfg = tmp_path / "c.toml"
        os.mkfifo(cfg)
        code, err = cli(capsys, "train", "-c", str(cfg), "-q")
        assert code == 1 and f"cannot read config file {cfg}: it is not a regular file" in one_error_line(err)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    weights = stopped_run / "model.safetensors"
    weights.unlink()
    weights.symlink_to("/dev/zero")
    code, err = cli(capsys, "sample", str(stopped_run), "-n", "4", "-o", str(tmp_path / "s.npy"))
    line = one_error_line(err)  # refused as a link (path confinement) before any byte is read
    assert code == 1 and str(weights) in line and ("symbolic link" in line or "not a regular file" in line)
    weights.unlink()
    with open(weights, "wb") as f:  # sparse: a 100 GiB file that takes no space
        f.truncate(100 << 30)
    code, err = cli(capsys, "sample", str(stopped_run), "-n", "4", "-o", str(tmp_path / "s.npy"))
    assert code == 1 and f"cannot read weights file {weights}: it is 100 GiB, more than the 64 GiB fgm reads" in one_error_line(err)

