"""divergence.warmup_steps: the first steps train with kl (the VAE update), then the run's
divergence takes over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fgm_core as fgm
from fgm_core.plugins import PluginSet
from fgmhelp import cli

PLUGINS = ["divergences", "mlp", "datasets", "priors"]


@pytest.fixture(scope="module")
def plugins() -> PluginSet:
    return PluginSet(only=PLUGINS, strict=True)


def tiny(out_dir: Path, name: str, divergence: str, warmup: int, steps: int = 30) -> dict:
    return {
        "data": {"dataset": "ring8", "options": {"n_train": 512, "n_test": 64}},
        "model": {"architecture": "mlp", "options": {"hidden": 16, "depth": 1}},
        "divergence": {"name": divergence, "warmup_steps": warmup},
        "optim": {"batch_size": 64, "schedule": "constant", "lr": 3e-3},
        "run": {"steps": steps, "seed": 5, "checkpoint_every": steps, "threads": 1, "device": "cpu",
                "tensorboard": False, "progress": False, "eval_samples": 64, "out_dir": str(out_dir), "name": name},
    }


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run.path / "model.safetensors"))


def test_a_warmup_as_long_as_the_run_is_the_kl_run_bit_for_bit(plugins, tmp_path):
    kl = fgm.train(tiny(tmp_path, "kl", "kl", 0), plugins=plugins, progress=False)
    js = fgm.train(tiny(tmp_path, "js-warm", "js", 30), plugins=plugins, progress=False)
    wk, wj = weights(kl), weights(js)
    assert set(wk) == set(wj) and all(torch.equal(wk[k], wj[k]) for k in wk)
    # the trained model is the run's divergence's (js), whatever the warm-up
    assert js.model.divergence is js.model.main_divergence and js.model.divergence.name == "js"


def test_after_the_warmup_the_run_divergence_trains(plugins, tmp_path):
    """10 warm-up steps then js: the first 10 steps are the kl run's, the rest differ from it
    (js's critic values are logged after the switch)."""
    kl = fgm.train(tiny(tmp_path, "kl", "kl", 0, steps=20), plugins=plugins, progress=False)
    warm = fgm.train(tiny(tmp_path, "warm", "js", 10, steps=20), plugins=plugins, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(weights(kl).values(), weights(warm).values()))
    rows = [json.loads(line) for line in (warm.path / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 20


def test_warmup_needs_the_density_critic(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--set", "critic.form=marginal", "--set", "divergence.warmup_steps=10",
                       "--steps", "20", "--out", tmp_path / "runs", "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "divergence.warmup_steps needs the density critic" in err
    code, _, err = cli(capsys, "train", "--set", "divergence.warmup_steps=-1", "--steps", "2", "--out",
                       tmp_path / "runs", "-q")
    assert code == 1 and "warmup_steps" in err


# --------------------------------------------------------------------------- critic.divergence
def test_critic_divergence_trains_the_estimator_only(plugins, tmp_path):
    """kl's model update does not depend on the estimator, so a js-trained estimator leaves the
    encoder, generator and prior bit-for-bit as in the kl run, and changes the critic alone."""
    kl = fgm.train(tiny(tmp_path, "kl", "kl", 0), plugins=plugins, progress=False)
    cfg = tiny(tmp_path, "kl-js", "kl", 0)
    cfg["critic"] = {"divergence": "js"}
    mixed = fgm.train(cfg, plugins=plugins, progress=False)
    wk, wm = weights(kl), weights(mixed)
    assert set(wk) == set(wm)
    model = [k for k in wk if not k.startswith("critic.")]
    assert model and all(torch.equal(wk[k], wm[k]) for k in model)
    assert not all(torch.equal(wk[k], wm[k]) for k in wk if k.startswith("critic."))


def test_critic_divergence_needs_the_density_critic(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--set", "critic.form=marginal", "--set", "critic.divergence=js",
                       "--steps", "2", "--out", tmp_path / "runs", "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "critic.divergence needs the density critic" in err
