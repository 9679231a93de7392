"""mkdocs hook: the site's home page is the repository's README.md.

``docs/index.md`` only names the page; its text is the README, with links into ``docs/``
made relative to the site and links to other files of the repository written as plain text
(the site cannot serve them).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _rewrite(match: re.Match) -> str:
    text, target = match.group(1), match.group(2)
    if re.match(r"[a-z]+://|#|mailto:", target):
        return match.group(0)
    if target.startswith("docs/") and target.endswith(".md") and not target.startswith("docs/results/"):
        return f"[{text}]({target[len('docs/'):]})"
    shown = text if text.strip("`") == target else f"{text} (`{target}`)"
    return f"{shown} in the repository"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return LINK.sub(_rewrite, (ROOT / "README.md").read_text())
