"""``fgm plugin new NAME``: the generated package installs with pip, passes its own tests
(which include a short training run with its preset), and shows in ``fgm plugins``; bad
names and existing directories are one-line errors that write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fgmhelp import assert_own_tests_pass, cli, fgm, installed, pip_install, plugins_json, uninstall

from fgm_core.plugins import clear_cache

NAME = "scaffold_probe"
DIST = "fgm-plugin-scaffold-probe"


@pytest.fixture(scope="module", autouse=True)
def _always_uninstall():
    """Whatever the test does, the generated package is not left installed."""
    yield
    if installed(DIST):
        uninstall(DIST)


@pytest.mark.slow
def test_generated_plugin_installs_passes_its_tests_and_is_listed(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # --no-build-isolation builds with this environment's
    r = fgm("plugin", "new", NAME, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    src = tmp_path / DIST
    assert f"created {DIST}" in r.stdout
    assert {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} == {
        "pyproject.toml", "README.md", "tests/test_plugin.py",
        *(f"src/fgm_plugin_{NAME}/{m}.py" for m in ("__init__", "divergence", "architecture", "dataset"))}
    assert not list(src.rglob("*.tmpl")) and "{{" not in (src / "pyproject.toml").read_text()
    if installed(DIST):
        assert uninstall(DIST).returncode == 0
    try:
        r = pip_install(src, tmp_path)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        info = plugins_json(tmp_path)[NAME]
        assert info["error"] is None and info["source"] == "third-party" and info["origin"] == DIST
        assert info["version"] == "0.1.0"
        assert info["components"] == {"divergences": [f"{NAME}_hellinger"], "architectures": [f"{NAME}_mlp"],
                                      "datasets": [f"{NAME}_blobs"]}
        assert set(info["hooks"]) == {"register_divergences", "register_architectures", "register_datasets",
                                      "plugin_preset"}
        assert info["descriptions"]["divergences"][f"{NAME}_hellinger"].startswith("scaled squared Hellinger")

        assert_own_tests_pass(src)
    finally:
        removed = uninstall(DIST)
    assert removed.returncode == 0, removed.stderr
    assert NAME not in plugins_json(tmp_path)


@pytest.fixture
def in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FGM_NO_PLUGIN_COMMANDS", "1")
    for key in ("FGM_PLUGINS", "FGM_STRICT_PLUGINS", "FGM_PLUGINS_TOML"):
        monkeypatch.delenv(key, raising=False)
    clear_cache()
    yield tmp_path
    clear_cache()


def test_out_directory_and_names(capsys, in_tmp: Path) -> None:
    code, out, err = cli(capsys, "plugin", "new", "my_div2", "-o", "deep/pkg")
    assert code == 0, err
    pkg = in_tmp / "deep" / "pkg"
    assert (pkg / "src" / "fgm_plugin_my_div2" / "__init__.py").is_file()
    text = (pkg / "pyproject.toml").read_text()
    assert 'name = "fgm-plugin-my-div2"' in text and 'my_div2 = "fgm_plugin_my_div2"' in text
    assert 'register("my_div2_hellinger"' in (pkg / "src" / "fgm_plugin_my_div2" / "__init__.py").read_text()
    assert [p.name for p in (in_tmp / "deep").iterdir()] == ["pkg"]  # no temporary folder left


@pytest.mark.parametrize("name, message", [
    ("Moons", "invalid plugin name 'Moons'"),
    ("my-plugin", "invalid plugin name 'my-plugin'"),
    ("2d", "invalid plugin name '2d'"),
    ("a__b", "invalid plugin name 'a__b'"),
    ("x" * 41, "invalid plugin name"),
    ("import", "invalid plugin name 'import': it is a Python keyword"),
    ("mlp", "plugin name 'mlp' is taken by an installed plugin"),
])
def test_bad_names_are_one_line_errors(capsys, in_tmp: Path, name: str, message: str) -> None:
    code, out, err = cli(capsys, "plugin", "new", name)
    assert code == 1 and out == ""
    assert err.startswith(f"fgm: error: {message}") and len(err.splitlines()) == 1
    assert list(in_tmp.iterdir()) == []


def test_an_existing_directory_is_not_touched(capsys, in_tmp: Path) -> None:
    (in_tmp / "fgm-plugin-moons").mkdir()
    (in_tmp / "fgm-plugin-moons" / "mine.txt").write_text("keep")
    code, out, err = cli(capsys, "plugin", "new", "moons")
    assert code == 1 and err == "fgm: error: fgm-plugin-moons already exists (choose another -o DIR or remove it)\n"
    assert [p.name for p in (in_tmp / "fgm-plugin-moons").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["fgm-plugin-moons"]
