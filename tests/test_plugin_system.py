"""The plugin manager (fgm_core/plugins.py) through the ``fgm`` command and the API.

Local plugin modules are written into tmp_path by the tests. Command-line checks run the
``fgm`` console script in a subprocess (real exit codes and stderr) with cwd=tmp_path, so no
plugins.toml of the repository is picked up; quick checks build a ``PluginSet`` directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from fgm_core.errors import FGMError, PluginError
from fgm_core.plugins import PluginPolicy, PluginSet, clear_cache, get_plugins

FGM = Path(sys.executable).parent / "fgm"
FGM_VERSION = metadata.version("fgm")
ENV_KEYS = ("FGM_PLUGINS", "FGM_STRICT_PLUGINS", "FGM_PLUGINS_TOML")

# --------------------------------------------------------------------------- local plugins
LOCAL_PLUGIN = '''
"""A working local plugin: a divergence, a dataset (name from settings) and a preset."""
import torch

from fgm_core.components import DataBundle, Divergence, Scaling
from fgm_core.hookspecs import hookimpl

__version__ = "1.2.3"


class LocalKL(Divergence):
    name = "local_kl"

    def f(self, u):
        return u * torch.log(u)

    def T(self, s):
        return 1 + s

    def C(self, s):
        return self.exp(s)

    def activation(self, v):
        return v

    def conjugate(self, t):
        return self.exp(t - 1)


def blobs(request):
    g = torch.Generator().manual_seed(request.seed)
    n = int(request.options.get("n", 512))
    x = 0.1 * torch.randn(n, 2, generator=g) + torch.tensor([1.0, -1.0])
    return DataBundle("local_blobs", x, x[:64].clone(), "vector", Scaling())


@hookimpl
def register_divergences(register):
    register("local_kl", lambda max_exp=40.0: LocalKL(max_exp), "KL, written locally")


@hookimpl
def register_datasets(register, settings):
    register(settings.get("dataset_name", "local_blobs"), blobs, "one blob")


@hookimpl
def plugin_preset(settings):
    return {
        "data": {"dataset": settings.get("dataset_name", "local_blobs")},
        "divergence": {"name": "local_kl"},
        "model": {"architecture": "mlp", "options": {"hidden": 16, "depth": 1}},
        "run": {"steps": 3, "name": "from-local", "eval_samples": 100, "tensorboard": False,
                "device": "cpu", "progress": False},
    }
'''

BROKEN_IMPORT = '''
raise ImportError("needs the missing package fancy_dep")
'''

BROKEN_HOOK = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_divergences(register):
    raise RuntimeError("hook exploded")


@hookimpl
def register_architectures(register):
    register("never_registered", object)
'''

LATE_FAIL = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_divergences(register):
    register("late_div", lambda max_exp=40.0: None)


@hookimpl
def register_datasets(register):
    raise RuntimeError("second hook failed")
'''

BAD_SIGNATURE = '''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_datasets(reg):
    reg("never", None)
'''


def dup_plugin(tag: str) -> str:
    return f'''
from fgm_core.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register("dup", lambda request: None, "from {tag}")
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def toml_local(**plugins: str) -> str:
    return "[plugins.local]\n" + "".join(f'{k} = "{v}"\n' for k, v in plugins.items())


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    """No FGM_* plugin variables, cwd in tmp_path, and a fresh plugin cache."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    clear_cache()
    yield
    clear_cache()


def fgm(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ENV_KEYS and k != "PYTHONPATH"}
    full["FGM_NO_PROGRESS"] = "1"
    full.update(env or {})
    return subprocess.run([str(FGM), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def plugins_json(cwd: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    r = fgm("plugins", "--json", cwd=cwd, env=env)
    assert r.returncode == 0, r.stderr
    return {p["name"]: p for p in json.loads(r.stdout)}


def policy(tmp_path: Path, text: str) -> PluginPolicy:
    return PluginPolicy.load(write(tmp_path / "plugins.toml", text))


# --------------------------------------------------------------------------- listing
def test_fgm_plugins_lists_builtins(tmp_path):
    r = fgm("plugins", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"mlp {FGM_VERSION}  [builtin: fgm]  ok" in out
    assert f"datasets {FGM_VERSION}  [builtin: fgm]  ok" in out
    assert "    hooks: plugin_preset, register_architectures\n    architectures: mlp\n" in out
    assert "    datasets: " in out and "ring8" in out
    assert "FAILED" not in out and r.stderr == ""

    infos = plugins_json(tmp_path)
    for name in ("mlp", "dcgan", "datasets"):
        i = infos[name]
        assert i["source"] == "builtin" and i["origin"] == "fgm" and i["version"] == FGM_VERSION
        assert i["error"] is None
    assert infos["mlp"]["hooks"] == ["plugin_preset", "register_architectures"]
    assert infos["mlp"]["components"] == {"architectures": ["mlp"]}
    assert infos["datasets"]["hooks"] == ["register_datasets"]
    assert {"ring8", "grid25", "swissroll"} <= set(infos["datasets"]["components"]["datasets"])
    assert list(infos) == sorted(infos)


def test_api_lists_the_same(tmp_path):
    ps = PluginSet(PluginPolicy())
    assert ps.infos["mlp"].source == "builtin"
    assert ps.plugin_of("architectures", "mlp") == "mlp"
    assert {"name": "mlp", "version": FGM_VERSION, "source": "builtin"} in ps.resolved()
    assert ps.preset("mlp") == {"model": {"architecture": "mlp"}}
    with pytest.raises(FGMError, match="unknown architecture 'mpl'.*did you mean 'mlp'"):
        ps.get("architectures", "mpl")


# --------------------------------------------------------------------------- broken plugins
def test_broken_plugins_are_reported_and_skipped(tmp_path):
    write(tmp_path / "broken_import.py", BROKEN_IMPORT)
    write(tmp_path / "broken_hook.py", BROKEN_HOOK)
    write(tmp_path / "plugins.toml", toml_local(broken_import="broken_import.py", broken_hook="broken_hook.py"))

    r = fgm("plugins", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"broken_import local  [local: {tmp_path / 'broken_import.py'}]  FAILED" in r.stdout
    assert "error: plugin 'broken_import' failed to import: ImportError: needs the missing package fancy_dep" in r.stdout
    assert "broken_hook local" in r.stdout
    assert "error: plugin 'broken_hook' raised in register_divergences: RuntimeError: hook exploded" in r.stdout
    assert f"mlp {FGM_VERSION}  [builtin: fgm]  ok" in r.stdout
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("fgm: warning: plugin 'broken_") for w in warnings)
    assert "Traceback" not in r.stderr

    infos = plugins_json(tmp_path)
    assert "ImportError" in infos["broken_import"]["error"]
    assert infos["broken_hook"]["source"] == "local"
    assert infos["broken_hook"]["components"] == {}  # its later hook never ran
    assert infos["mlp"]["error"] is None

    # in-process: the failures are listed, the other plugins work
    ps = get_plugins()
    assert len(ps.failures) == 2
    assert "never_registered" not in ps.names("architectures")
    assert ps.get("architectures", "mlp").factory().name == "mlp"
    assert {r["name"] for r in ps.resolved()}.isdisjoint({"broken_import", "broken_hook"})
    with pytest.raises(PluginError, match="plugin 'broken_hook' failed to load"):
        ps.preset("broken_hook")


@pytest.mark.parametrize(
    "plugin, text, how, expected",
    [
        ("broken_import", BROKEN_IMPORT, "flag", "plugin 'broken_import' failed to import: ImportError"),
        ("broken_hook", BROKEN_HOOK, "env", "plugin 'broken_hook' raised in register_divergences: RuntimeError"),
    ],
)
def test_strict_plugins_make_failures_fatal(tmp_path, plugin, text, how, expected):
    write(tmp_path / f"{plugin}.py", text)
    write(tmp_path / "plugins.toml", toml_local(**{plugin: f"{plugin}.py"}))
    if how == "flag":
        r = fgm("--strict-plugins", "plugins", cwd=tmp_path)
    else:
        r = fgm("plugins", cwd=tmp_path, env={"FGM_STRICT_PLUGINS": "1"})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fgm: error: ") and expected in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_strict_in_api_and_policy(tmp_path):
    write(tmp_path / "broken_hook.py", BROKEN_HOOK)
    local = {"broken_hook": tmp_path / "broken_hook.py"}
    assert PluginSet(PluginPolicy(local=local)).failures  # lenient by default
    with pytest.raises(PluginError, match="plugin 'broken_hook' raised in register_divergences"):
        PluginSet(PluginPolicy(local=local), strict=True)
    with pytest.raises(PluginError, match="broken_hook"):
        PluginSet(PluginPolicy(local=local, strict=True))
    pol = policy(tmp_path, toml_local(broken_hook="broken_hook.py").replace("[plugins.local]", "[plugins]\nstrict = true\n\n[plugins.local]"))
    assert pol.strict
    with pytest.raises(PluginError, match="broken_hook"):
        PluginSet(pol)


def test_a_failing_hook_drops_the_plugins_other_components(tmp_path):
    write(tmp_path / "late_fail.py", LATE_FAIL)
    ps = PluginSet(PluginPolicy(local={"late_fail": tmp_path / "late_fail.py"}))
    assert "second hook failed" in ps.infos["late_fail"].error
    assert "late_div" not in ps.names("divergences")  # the plugin is skipped whole
    assert ps.infos["late_fail"].components == {}


def test_invalid_hook_signature_is_reported_not_a_crash(tmp_path):
    write(tmp_path / "bad_signature.py", BAD_SIGNATURE)
    ps = PluginSet(PluginPolicy(local={"bad_signature": tmp_path / "bad_signature.py"}))
    err = ps.infos["bad_signature"].error
    assert err.startswith("plugin 'bad_signature' has invalid hooks") and "\n" not in err
    assert "never" not in ps.names("datasets") and "ring8" in ps.names("datasets")


# --------------------------------------------------------------------------- conflicts
def test_two_plugins_registering_one_name(tmp_path):
    """A clash is an error only where the name is used (naming both plugins); `fgm plugins` shows it."""
    write(tmp_path / "dup_a.py", dup_plugin("a"))
    write(tmp_path / "dup_b.py", dup_plugin("b"))
    local = {"dup_a": tmp_path / "dup_a.py", "dup_b": tmp_path / "dup_b.py"}
    ps = PluginSet(PluginPolicy(local=local))
    assert "dup" not in ps.names("datasets") and "ring8" in ps.names("datasets")
    with pytest.raises(PluginError, match="dataset 'dup' is registered by 2 plugins") as e:
        ps.get("datasets", "dup")
    assert "'dup_a'" in str(e.value) and "'dup_b'" in str(e.value)
    with pytest.raises(PluginError, match="dataset 'dup' is registered by 2 plugins"):
        PluginSet(PluginPolicy(local=local), strict=True)

    write(tmp_path / "plugins.toml", toml_local(dup_a="dup_a.py", dup_b="dup_b.py"))
    r = fgm("plugins", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "clash: dataset 'dup' (also registered by 'dup_b')" in r.stdout
    assert "clash: dataset 'dup' (also registered by 'dup_a')" in r.stdout

    # blocking one of them resolves the conflict
    r = fgm("plugins", "--json", cwd=tmp_path, env={"FGM_PLUGINS": "dup_a,mlp"})
    assert r.returncode == 0, r.stderr
    infos = {p["name"]: p for p in json.loads(r.stdout)}
    assert set(infos) == {"dup_a", "mlp"} and infos["dup_a"]["clashes"] == []


def test_a_local_plugin_named_like_an_installed_one(tmp_path):
    write(tmp_path / "other.py", dup_plugin("x"))
    with pytest.raises(PluginError, match="two plugins are named 'mlp'"):
        PluginSet(PluginPolicy(local={"mlp": tmp_path / "other.py"}))


# --------------------------------------------------------------------------- selection
def test_fgm_plugins_env_restricts_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("FGM_PLUGINS", "mlp,datasets")
    ps = PluginSet()
    assert set(ps.infos) == {"mlp", "datasets"}
    assert ps.names("architectures") == ["mlp"] and ps.names("divergences") == []
    monkeypatch.setenv("FGM_PLUGINS", "none")
    assert PluginSet().infos == {}
    monkeypatch.setenv("FGM_PLUGINS", "")  # empty is no restriction
    assert {"mlp", "datasets", "dcgan"} <= set(PluginSet().infos)

    assert set(plugins_json(tmp_path, env={"FGM_PLUGINS": "mlp,datasets"})) == {"mlp", "datasets"}


def test_blocked_plugin_is_hidden(tmp_path):
    write(tmp_path / "plugins.toml", '[plugins]\nblocked = ["dcgan"]\n')
    ps = get_plugins()  # discovered in the working directory
    assert ps.policy.blocked == ["dcgan"]
    assert "dcgan" not in ps.infos and "dcgan" not in ps.names("architectures")
    assert "mlp" in ps.infos
    with pytest.raises(FGMError, match="unknown architecture 'dcgan'"):
        ps.get("architectures", "dcgan")
    assert "dcgan" not in plugins_json(tmp_path)


def test_enabled_list(tmp_path):
    ps = PluginSet(policy(tmp_path, '[plugins]\nenabled = ["mlp"]\nrequired = { datasets = ">=0.1" }\n'))
    assert set(ps.infos) == {"mlp", "datasets"}  # required plugins count as enabled


def test_required_version_not_met(tmp_path):
    with pytest.raises(PluginError, match=rf"required plugin 'mlp' is version {FGM_VERSION}, policy asks >=99"):
        PluginSet(policy(tmp_path, '[plugins.required]\nmlp = ">=99"\n'))
    assert "mlp" in PluginSet(policy(tmp_path, '[plugins.required]\nmlp = ">=0.1"\n')).infos

    write(tmp_path / "plugins.toml", '[plugins.required]\nmlp = ">=99"\n')
    r = fgm("plugins", cwd=tmp_path)
    assert r.returncode == 1
    assert "required plugin 'mlp'" in r.stderr and ">=99" in r.stderr and FGM_VERSION in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_required_plugin_missing(tmp_path):
    with pytest.raises(PluginError, match=r"required plugin 'no_such_plugin' \(>=1\) is not installed"):
        PluginSet(policy(tmp_path, '[plugins.required]\nno_such_plugin = ">=1"\n'))
    write(tmp_path / "broken_import.py", BROKEN_IMPORT)
    with pytest.raises(PluginError, match="'broken_import'.*it failed to load"):
        PluginSet(policy(tmp_path, toml_local(broken_import="broken_import.py")
                         + '\n[plugins.required]\nbroken_import = ">=0"\n'))


def test_bad_required_specifier(tmp_path):
    with pytest.raises(FGMError, match="plugins.required.mlp = 'latest' is not a version specifier"):
        policy(tmp_path, '[plugins.required]\nmlp = "latest"\n')


# --------------------------------------------------------------------------- local modules and settings
def test_local_plugin_from_plugins_toml(tmp_path):
    write(tmp_path / "mods" / "local_plugin.py", LOCAL_PLUGIN)
    # relative paths are relative to the policy file, not the working directory
    pol = policy(tmp_path / "conf", toml_local(local_plugin="../mods/local_plugin.py"))
    ps = PluginSet(pol)
    info = ps.infos["local_plugin"]
    assert info.error is None and info.source == "local" and info.version == "1.2.3"
    assert info.origin == str((tmp_path / "mods" / "local_plugin.py").resolve())
    assert info.components == {"divergences": ["local_kl"], "datasets": ["local_blobs"]}
    assert info.hooks == ["plugin_preset", "register_datasets", "register_divergences"]
    assert ps.plugin_of("divergences", "local_kl") == "local_plugin"
    assert {"name": "local_plugin", "version": "1.2.3", "source": "local"} in ps.resolved()

    write(tmp_path / "plugins.toml", toml_local(local_plugin="mods/local_plugin.py"))
    infos = plugins_json(tmp_path)
    assert infos["local_plugin"]["source"] == "local" and infos["local_plugin"]["error"] is None


def test_settings_reach_hooks(tmp_path):
    write(tmp_path / "local_plugin.py", LOCAL_PLUGIN)
    pol = policy(tmp_path, toml_local(local_plugin="local_plugin.py")
                 + '\n[settings.local_plugin]\ndataset_name = "renamed_blobs"\n')
    ps = PluginSet(pol)
    assert ps.settings("local_plugin") == {"dataset_name": "renamed_blobs"}
    assert "renamed_blobs" in ps.names("datasets") and "local_blobs" not in ps.names("datasets")
    assert ps.preset("local_plugin")["data"] == {"dataset": "renamed_blobs"}  # plugin_preset(settings)
    assert ps.settings("mlp") == {}  # hooks without `settings` still run
    assert "mlp" in ps.names("architectures")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[plugins]\nenable = ["mlp"]\n', "unknown key plugins.enable"),
        ('[plugin]\nblocked = ["dcgan"]\n', r"unknown table \[plugin\]"),
        ('[plugins]\nblocked = "dcgan"\n', "plugins.blocked must be a list"),
        ('[plugins]\nlocal = "x.py"\n', "plugins.local must be a table"),
        ("[settings]\nmlp = 3\n", r"\[settings\] must hold one table per plugin"),
        ("[plugins\n", "not valid TOML"),
    ],
)
def test_invalid_policy_files(tmp_path, text, message):
    with pytest.raises(FGMError, match=message):
        policy(tmp_path, text)


def test_invalid_policy_file_on_the_command_line(tmp_path):
    write(tmp_path / "plugins.toml", '[plugins]\nenable = ["mlp"]\n')
    r = fgm("plugins", cwd=tmp_path)
    assert r.returncode == 1
    assert "unknown key plugins.enable" in r.stderr and "Traceback" not in r.stderr
    # an explicit policy path wins over the one in the working directory
    write(tmp_path / "other.toml", '[plugins]\nblocked = ["dcgan"]\n')
    infos = plugins_json(tmp_path, env={"FGM_PLUGINS_TOML": str(tmp_path / "other.toml")})
    assert "dcgan" not in infos and "mlp" in infos
    r = fgm("--plugins-toml", str(tmp_path / "missing.toml"), "plugins", cwd=tmp_path)
    assert r.returncode == 1 and "missing.toml not found" in r.stderr


def test_train_with_a_local_plugin_path(tmp_path):
    plugin = write(tmp_path / "mods" / "local_plugin.py", LOCAL_PLUGIN)
    r = fgm("train", "--plugin", str(plugin), "--out", str(tmp_path / "runs"), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "from-local"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["dataset"] == "local_blobs" and cfg["divergence"]["name"] == "local_kl"
    assert cfg["run"]["steps"] == 3 and cfg["model"]["options"] == {"hidden": 16, "depth": 1}
    assert cfg["plugins"] == ["local_plugin"]
    recorded = json.loads((run / "plugins.json").read_text())
    assert {"name": "local_plugin", "version": "1.2.3", "source": "local"} in recorded
    assert (run / "model.safetensors").exists()

    # the preset is under the command line
    r = fgm("config", "show", "--json", "--plugin", str(plugin), "--steps", "7", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["run"]["steps"] == 7 and shown["data"]["dataset"] == "local_blobs"

    # a missing module path is a clear error
    r = fgm("train", "--plugin", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert r.returncode == 1 and "nope.py not found" in r.stderr
