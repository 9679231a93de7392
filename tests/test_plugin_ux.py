"""What a plugin author and a user of presets see: component descriptions in ``fgm plugins``,
presets whose option tables can be cleared or replaced, and ``fgm config show`` checking
component names like ``fgm train`` does.

Commands run in-process through ``fgm_core.cli.main`` with cwd in tmp_path; the local plugin
is a module written into tmp_path and loaded with ``--plugin PATH``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from fgmhelp import cli

from fgm_core.plugins import clear_cache

MOONS = '''
"""A preset that picks its own architecture with options only that architecture knows."""
import torch
from torch import nn

from fgm_core.components import Architecture, Networks
from fgm_core.errors import FGMError
from fgm_core.hookspecs import hookimpl


class Enc(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.net = nn.Linear(d, 2 * k)

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)


class Critic(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.net = nn.Linear(d, 1)

    def forward(self, x, z=None):
        return self.net(x).squeeze(-1)


class Linear(Architecture):
    name = "moons_linear"
    critic_forms = ("density", "marginal")

    def build(self, spec):
        if set(spec.options) - {"width"}:
            raise FGMError(f"moons_linear: unknown option {sorted(set(spec.options) - {'width'})[0]!r}", "use width")
        d, k = spec.data_shape[0], spec.latent_dim
        return Networks(Enc(d, k), nn.Linear(k, d), Critic(d))


@hookimpl
def register_architectures(register):
    register("moons_linear", Linear, "one linear layer per network (option: width)")


@hookimpl
def plugin_preset():
    return {"model": {"architecture": "moons_linear", "options": {"width": 3}}}
'''

BAD_DESCRIPTION = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("bad_desc", lambda request: None, 42)
'''


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    for key in ("FGM_PLUGINS", "FGM_STRICT_PLUGINS", "FGM_PLUGINS_TOML"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FGM_NO_PLUGIN_COMMANDS", "1")
    monkeypatch.setenv("FGM_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    clear_cache()
    yield
    clear_cache()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def shown(capsys, *argv: str) -> dict:
    code, out, err = cli(capsys, "config", "show", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------- descriptions
def test_descriptions_are_listed_in_text_and_json(capsys, tmp_path):
    moons = write(tmp_path / "moons.py", MOONS)
    (tmp_path / "plugins.toml").write_text(f'[plugins.local]\nmoons = "{moons}"\n')
    code, out, err = cli(capsys, "plugins", "--json")
    assert code == 0, err
    infos = {p["name"]: p for p in json.loads(out)}
    assert infos["moons"]["descriptions"] == {
        "architectures": {"moons_linear": "one linear layer per network (option: width)"}}
    # a built-in's description: the text given to register(), not the name
    divs = infos["divergences"]
    assert divs["descriptions"]["divergences"]["kl"].startswith("Kullback-Leibler")
    assert set(divs["descriptions"]["divergences"]) == set(divs["components"]["divergences"])

    code, out, err = cli(capsys, "plugins")
    assert code == 0, err
    assert ("    architectures: moons_linear\n"
            "      moons_linear: one linear layer per network (option: width)\n") in out


def test_a_description_that_is_not_text_fails_the_plugin(capsys, tmp_path):
    bad = write(tmp_path / "bad.py", BAD_DESCRIPTION)
    (tmp_path / "plugins.toml").write_text(f'[plugins.local]\nbad = "{bad}"\n')
    code, out, err = cli(capsys, "plugins", "--json")
    assert code == 0, err
    info = {p["name"]: p for p in json.loads(out)}["bad"]
    assert info["components"] == {} and info["descriptions"] == {}
    assert "description of 'bad_desc' must be a string" in info["error"]


# --------------------------------------------------------------------------- replacing preset tables
def test_a_presets_options_merge_by_default(capsys, tmp_path):
    write(tmp_path / "moons.py", MOONS)
    cfg = shown(capsys, "--plugin", "./moons.py")
    assert cfg["model"] == {**cfg["model"], "architecture": "moons_linear", "options": {"width": 3}}
    # one entry changed, the preset's others kept
    cfg = shown(capsys, "--plugin", "./moons.py", "--set", "model.options.depth=2")
    assert cfg["model"]["options"] == {"width": 3, "depth": 2}
    # the same from a config file's table
    write(tmp_path / "run.toml", "[model.options]\ndepth = 2\n")
    cfg = shown(capsys, "--plugin", "./moons.py", "-c", "run.toml")
    assert cfg["model"]["options"] == {"width": 3, "depth": 2}


def test_set_replaces_a_presets_table_and_empty_clears_it(capsys, tmp_path):
    write(tmp_path / "moons.py", MOONS)
    cfg = shown(capsys, "--plugin", "./moons.py", "-a", "mlp", "--set", "model.options={}")
    assert cfg["model"]["architecture"] == "mlp" and cfg["model"]["options"] == {}
    cfg = shown(capsys, "--plugin", "./moons.py", "--set", "model.options={hidden=8, depth=1}")
    assert cfg["model"]["options"] == {"hidden": 8, "depth": 1}
    # later --set wins whole: the table is replaced again, not merged
    cfg = shown(capsys, "--plugin", "./moons.py", "--set", "model.options={hidden=8}", "--set", "model.options={depth=1}")
    assert cfg["model"]["options"] == {"depth": 1}
    # a config file clears with an empty table
    write(tmp_path / "run.toml", '[model]\narchitecture = "mlp"\noptions = {}\n')
    cfg = shown(capsys, "--plugin", "./moons.py", "-c", "run.toml")
    assert cfg["model"]["options"] == {}
    # an empty section is not a clearing marker: the preset's architecture stays
    write(tmp_path / "empty.toml", "[model]\n")
    cfg = shown(capsys, "--plugin", "./moons.py", "-c", "empty.toml")
    assert cfg["model"]["architecture"] == "moons_linear" and cfg["model"]["options"] == {"width": 3}


def test_training_with_a_preset_and_another_architecture(capsys, tmp_path):
    """``--plugin moons -a mlp``: the preset's options fail for mlp; cleared, training runs."""
    write(tmp_path / "moons.py", MOONS)
    tiny = ["--dataset", "ring8", "--steps", "2", "--device", "cpu", "--out", tmp_path / "runs", "-q",
            "--set", "data.options={n_train=300, n_test=50}", "--set", "run.eval_samples=50",
            "--set", "run.tensorboard=false", "--set", "run.threads=1", "--set", "optim.batch_size=32"]
    code, out, err = cli(capsys, "train", "--plugin", "./moons.py", "-a", "mlp", *tiny, "--name", "merged")
    assert code == 1 and err.startswith("fgm: error: ") and "model.options.width" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "merged").exists()
    code, out, err = cli(capsys, "train", "--plugin", "./moons.py", "-a", "mlp", "--set",
                         "model.options={hidden=8, depth=1}", *tiny, "--name", "cleared")
    assert code == 0, err
    cfg = json.loads((tmp_path / "runs" / "cleared" / "config.json").read_text())
    assert cfg["model"]["architecture"] == "mlp" and cfg["model"]["options"] == {"hidden": 8, "depth": 1}
    assert cfg["plugins"] == ["moons"]


# --------------------------------------------------------------------------- config show checks names
@pytest.mark.parametrize("args, message", [
    (["-d", "nonexistent"], "unknown divergence 'nonexistent'"),
    (["--dataset", "ring9"], "unknown dataset 'ring9' (did you mean 'ring8'?"),
    (["-a", "mpl"], "unknown architecture 'mpl' (did you mean 'mlp'?"),
])
def test_config_show_checks_component_names(capsys, args, message):
    code, out, err = cli(capsys, "config", "show", *args)
    assert code == 1 and out == ""
    assert err.startswith(f"fgm: error: {message}") and len(err.splitlines()) == 1
    # the same error as fgm train gives
    code, _, train_err = cli(capsys, "train", *args, "--steps", "1", "-q")
    assert code == 1 and train_err == err
