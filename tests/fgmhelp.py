"""Helpers for tests that drive the ``fgm`` command: in-process (:func:`cli`), or as the
console script in a subprocess (no FGM_* plugin variables, no PYTHONPATH) next to a plugin
package installed for real with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FGM = Path(sys.executable).parent / "fgm"


def env() -> dict[str, str]:
    e = dict(os.environ)
    for key in ("FGM_PLUGINS", "FGM_PLUGINS_TOML", "FGM_STRICT_PLUGINS", "PYTHONPATH"):
        e.pop(key, None)
    e["FGM_NO_PROGRESS"] = "1"
    e["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return e


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def fgm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([str(FGM), *args], cwd)


def pip_install(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """A real, offline install of ``src`` into this environment, built with its setuptools."""
    return run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                str(src)], cwd, timeout=180)


def uninstall(dist: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "pip", "uninstall", "-y", dist], ROOT)


def installed(dist: str) -> bool:
    return run([sys.executable, "-m", "pip", "show", dist], ROOT).returncode == 0


def plugins_json(cwd: Path) -> dict[str, dict]:
    r = fgm("plugins", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return {p["name"]: p for p in json.loads(r.stdout)}


def assert_own_tests_pass(src: Path) -> None:
    """The package's own test suite passes against the installed package, nothing skipped."""
    r = run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
             str(src / "tests")], src, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout and " skipped" not in r.stdout


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    """``fgm ARGV`` in-process through the console entry point: (exit status, stdout, stderr)."""
    from fgm_core.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
