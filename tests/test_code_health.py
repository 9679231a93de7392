"""The code-health checks CI runs with the tests: lint (ruff), types (mypy) and layers (import-linter).

Each tool reads its configuration from pyproject.toml; a tool that is not installed is skipped
(``pip install -e ".[test]"`` installs all three)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*argv: str) -> None:
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
    if exe is None:
        pytest.skip(f"{argv[0]} is not installed")
    done = subprocess.run([exe, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"


def test_ruff_is_clean():
    run_tool("ruff", "check", "--no-cache")


def test_ruff_format_is_applied():
    run_tool("ruff", "format", "--check", "--no-cache")


def test_mypy_is_clean():
    run_tool("mypy")


def test_import_layers_hold():
    run_tool("lint-imports", "--no-cache")
