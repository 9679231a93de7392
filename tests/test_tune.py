"""``fgm tune``: a tiny Optuna study runs, prunes, resumes from SQLite, and its best.toml trains."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
import torch

from fgm_core.cli import main
from fgm_core.config import build_config, dump_toml, load_toml

pytest.importorskip("optuna")

SEARCH = """
[tune]
trials = 2
report_every = 20
objective = { high_quality = 1.0, modes = 0.5, likelihood_gap = -0.01 }
pruner_startup_trials = 1

[space]
"optim.lr" = { low = 1e-4, high = 3e-3, log = true }
"critic.n_critic" = { low = 1, high = 2 }
"divergence.name" = { choices = ["kl", "js"] }
"""


def tiny_config(tmp: Path) -> Path:
    cfg = build_config({
        "data": {"dataset": "ring8", "options": {"n_train": 1000, "n_test": 200}},
        "model": {"options": {"hidden": 16, "depth": 2}},
        "optim": {"batch_size": 64},
        "run": {"steps": 40, "seed": 3, "threads": 1, "device": "cpu", "tensorboard": False, "progress": False,
                "eval_samples": 200, "checkpoint_every": 1000},
    })
    path = tmp / "tiny.toml"
    path.write_text(dump_toml(cfg))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def test_study_runs_resumes_and_best_toml_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FGM_NO_PROGRESS", "1")
    base = tiny_config(tmp_path)
    search = tmp_path / "search.toml"
    search.write_text(SEARCH)
    out = tmp_path / "study"
    code, stdout, err = run(capsys, "tune", str(search), "-c", str(base), "-o", str(out))
    assert code == 0, err
    assert "best trial" in stdout
    rows = json.loads((out / "trials.json").read_text())
    assert len(rows) == 2
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert (out / "history.png").stat().st_size > 1000
    # the study is in SQLite: the same command with more trials resumes it (2 done, 1 more)
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 2
    code, stdout, err = run(capsys, "tune", str(search), "-c", str(base), "-o", str(out), "--trials", "3")
    assert code == 0, err
    assert "2 trials done, running 1 more" in stdout
    rows = json.loads((out / "trials.json").read_text())
    assert [r["number"] for r in rows] == [0, 1, 2]
    # best.toml holds the best completed trial's values and is a ready configuration
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    cfg = load_toml(out / "best.toml")
    assert cfg["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert cfg["critic"]["n_critic"] == best["params"]["critic.n_critic"]
    assert cfg["divergence"]["name"] == best["params"]["divergence.name"]
    # the objective is the weighted sum of the recorded metrics
    m = best["metrics"]
    assert best["value"] == pytest.approx(m["high_quality"] + 0.5 * m["modes"] - 0.01 * m["likelihood_gap"])
    code, stdout, err = run(capsys, "train", "-c", str(out / "best.toml"), "--steps", "5", "--out",
                            str(tmp_path / "again"), "--name", "best", "-q")
    assert code == 0, err
    assert (tmp_path / "again" / "best" / "model.safetensors").exists()


def test_pruning_stops_a_trial_that_falls_behind(tmp_path, capsys, monkeypatch):
    """A hopeless value (lr so small nothing moves) is pruned at its first report once a
    good trial has set the median."""
    monkeypatch.setenv("FGM_NO_PROGRESS", "1")
    base = tiny_config(tmp_path)
    search = tmp_path / "prune.toml"
    search.write_text("""
[tune]
trials = 3
report_every = 10
objective = { log_likelihood = 1.0 }
pruner_startup_trials = 1
[space]
"optim.lr" = { choices = [3e-3, 1e-9] }
""")
    out = tmp_path / "prune"
    code, _, err = run(capsys, "tune", str(search), "-c", str(base), "-o", str(out), "--set", "run.steps=60")
    assert code == 0, err
    rows = json.loads((out / "trials.json").read_text())
    # seeded TPE draws 1e-9, 3e-3, 1e-9: the third trial is pruned at its first report
    assert [r["params"]["optim.lr"] for r in rows] == [1e-9, 3e-3, 1e-9]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert rows[2]["last_step"] == 10 and rows[2]["metrics"] is None


def test_missing_optuna_is_one_line_with_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    search = tmp_path / "s.toml"
    search.write_text(SEARCH)
    code, _, err = run(capsys, "tune", str(search), "-o", str(tmp_path / "o"))
    assert code == 1
    assert err.startswith("fgm: error: fgm tune needs Optuna") and "pip install 'fgm[tune]'" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, words", [
    ('[space]\n"optim.lr" = { low = 1e-2, high = 1e-3 }\n', "low must be below high"),
    ('[tune]\nobjective = { accuracy = 1.0 }\n[space]\n"optim.lr" = { choices = [1e-3] }\n', "unknown objective metric"),
    ('[tune]\ntrials = 3\n', "no [space] table"),
    ('[space]\n"optim.lr" = { low = 0.0, high = 1.0, log = true }\n', "log range needs low > 0"),
])
def test_bad_search_file_is_one_clear_line(tmp_path, capsys, text, words):
    search = tmp_path / "bad.toml"
    search.write_text(text)
    code, _, err = run(capsys, "tune", str(search), "-o", str(tmp_path / "o"))
    assert code == 1
    assert err.startswith("fgm: error: search file") and words in err, err
    assert not (tmp_path / "o" / "best.toml").exists()
