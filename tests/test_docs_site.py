"""The documentation: the site builds with ``mkdocs build --strict`` (every link resolves,
every API object named in docs/api.md has docstrings to render), and the README and the docs
link only to files inside the repository and never to the team's private folders.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".tmpl", ".json", ".html", ".js"}
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "dist", "__pycache__", "runs"}


def repo_text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix in TEXT_SUFFIXES and path.stat().st_size < 2_000_000:
                yield path


def test_site_builds_strictly(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason='the docs extra is not installed (pip install -e ".[docs]")')
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                        str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    home = (site / "index.html").read_text()
    assert "Quickstart" in home and "fgm plugin new" in home  # the README is the home page
    api = (site / "api" / "index.html").read_text()
    for anchor in ("fgm_core.train", "fgm_core.load_run", "fgm_core.Run", "fgm_core.export", "fgm_core.open_export",
                   "fgm_core.components.Divergence.conj_act", "fgm_core.components.Architecture.build",
                   "fgm_core.hookspecs.register_divergences", "fgm_core.hookspecs.plugin_preset"):
        assert f'id="{anchor}"' in api, anchor
    for page in ("math", "plugins", "config", "components"):
        assert (site / page / "index.html").is_file(), page


def test_docs_links_stay_inside_the_repository() -> None:
    """The README and docs/ link only to files of the repository, and every relative link
    (examples' READMEs included) resolves."""
    own = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in [*own, *sorted((ROOT / "examples").glob("*/README.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target):
                assert page not in own, f"{page.name} links outside the repository: {target}"
                continue
            if target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
            assert ROOT in path.parents or path == ROOT, f"{page.relative_to(ROOT)} links outside the repository: {target}"


def test_nothing_points_to_the_teams_private_folders() -> None:
    bad = re.compile(r"\.\./shared|shared/docs|fgm-math\.md|anchors\.md")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in repo_text_files() if p != Path(__file__)
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if bad.search(line)]
    assert hits == [], hits
