"""Install examples/fgm-plugin-example for real (pip, non-editable), use it through the
``fgm`` command, run its own tests, then uninstall it and check it is gone.

The install is from a copy of the example in a temporary directory, so no build artefacts
land in the repository (and the copy proves the template is self-contained). A module-level
guard uninstalls the package whatever happens.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from fgmhelp import FGM, ROOT, assert_own_tests_pass, fgm, installed, pip_install, plugins_json, run, uninstall

EXAMPLE = ROOT / "examples" / "fgm-plugin-example"
DIST = "fgm-plugin-example"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _always_uninstall():
    """Module-level guard: whatever the test does, the example is not left installed."""
    yield
    if installed(DIST):
        uninstall(DIST)


def test_install_use_and_uninstall_the_example_plugin(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")  # --no-build-isolation builds with this environment's
    assert FGM.exists(), f"the fgm console script is not next to {sys.executable}"
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / DIST
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache"))
    if installed(DIST):  # a leftover editable or earlier install: start from a clean slate
        assert uninstall(DIST).returncode == 0

    try:
        r = pip_install(src, tmp_path)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

        # a real install: the package imports from site-packages, not from the copy
        r = run([sys.executable, "-c", "import fgm_plugin_example as m; print(m.__file__, m.__version__)"], work)
        assert r.returncode == 0, r.stderr
        where, version = r.stdout.split()
        assert version == "0.1.0" and "site-packages" in where and str(src) not in where

        # fgm plugins lists it as a third-party plugin with its hooks and components
        plugins = plugins_json(work)
        ex = plugins["example"]
        assert ex["source"] == "third-party" and ex["origin"] == DIST and ex["version"] == "0.1.0"
        assert ex["error"] is None
        assert ex["components"] == {"divergences": ["triangular"], "architectures": ["tiny_mlp"],
                                    "datasets": ["spiral"]}
        assert set(ex["hooks"]) == {"register_divergences", "register_architectures", "register_datasets",
                                    "plugin_preset"}
        assert all(p["source"] == "builtin" for n, p in plugins.items() if n != "example")
        text = fgm("plugins", cwd=work)
        assert text.returncode == 0 and "example 0.1.0  [third-party: fgm-plugin-example]  ok" in text.stdout

        # train with its preset
        out = tmp_path / "runs"
        r = fgm("train", "--plugin", "example", "--steps", "20", "--out", str(out), "--device", "cpu",
                 "--quiet", "--set", "run.progress=false", "--set", "data.options.n_train=2000",
                 "--set", "run.eval_samples=500", "--set", "run.tensorboard=false", cwd=work)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["data"]["dataset"] == "spiral"
        assert cfg["divergence"]["name"] == "triangular"
        assert cfg["model"]["architecture"] == "tiny_mlp"
        assert cfg["plugins"] == ["example"]
        recorded = {p["name"]: p for p in json.loads((run_dir / "plugins.json").read_text())}
        assert recorded["example"] == {"name": "example", "version": "0.1.0", "source": "third-party"}
        assert (run_dir / "model.safetensors").exists() and (run_dir / "summary.json").exists()

        # the example's own test suite passes against the installed package
        assert_own_tests_pass(src)
    finally:
        removed = uninstall(DIST)
    assert removed.returncode == 0, removed.stderr
    assert not installed(DIST)

    # gone: not listed, and its components are unknown names again
    assert "example" not in plugins_json(work)
    r = fgm("train", "--dataset", "spiral", "--steps", "1", "--out", str(tmp_path / "runs2"), "--quiet",
             cwd=work)
    assert r.returncode != 0
    assert "unknown dataset 'spiral'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs2").exists() or not any((tmp_path / "runs2").iterdir())
