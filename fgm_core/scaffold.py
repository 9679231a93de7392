"""``fgm plugin new NAME``: write a third-party plugin package from the template shipped
with fgm (``fgm_core/templates/plugin``).

The template's files end in ``.tmpl``; in their paths and text ``__package__`` and the
placeholders ``{{name}}``, ``{{package}}``, ``{{dist}}`` and ``{{fgm_version}}`` are
replaced. The package is written into a temporary folder beside the target and moved into
place at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import keyword
import re
import shutil
import tempfile
from pathlib import Path

from fgm_core.errors import FGMError
from fgm_core.version import __version__

TEMPLATE = Path(__file__).parent / "templates" / "plugin"
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def check_name(name: str, taken: list[str] | tuple[str, ...] = ()) -> None:
    """Raise :class:`FGMError` unless ``name`` can name a plugin, its package and entry point."""
    if not NAME_RE.fullmatch(name) or name.endswith("_") or "__" in name:
        raise FGMError(
            f"invalid plugin name {name!r}",
            "use 1 to 40 lowercase letters, digits and single underscores, starting with a letter, e.g. moons",
        )
    if keyword.iskeyword(name):
        raise FGMError(f"invalid plugin name {name!r}: it is a Python keyword", "choose another name")
    if name in taken:
        raise FGMError(
            f"plugin name {name!r} is taken by an installed plugin",
            "choose another name; `fgm plugins` lists the taken ones",
        )


def new_plugin(name: str, out: Path | None = None, taken: list[str] | tuple[str, ...] = ()) -> Path:
    """Write the package for plugin ``name`` into ``out`` (default ``./fgm-plugin-NAME``);
    returns the package directory. ``out`` must not exist yet."""
    check_name(name, taken)
    values = {
        "name": name,
        "package": f"fgm_plugin_{name}",
        "dist": f"fgm-plugin-{name.replace('_', '-')}",
        "fgm_version": __version__,
    }
    target = Path(out) if out is not None else Path(values["dist"])
    if target.exists() or target.is_symlink():
        raise FGMError(f"{target} already exists", "choose another -o DIR or remove it")
    if not TEMPLATE.is_dir():
        raise FGMError(f"the plugin template is missing from this fgm installation ({TEMPLATE})", "reinstall fgm")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for src in sorted(TEMPLATE.rglob("*.tmpl")):
            rel = src.relative_to(TEMPLATE).with_suffix("")  # drop .tmpl
            dest = tmp / str(rel).replace("__package__", values["package"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = src.read_text()
            for key, value in values.items():
                text = text.replace("{{" + key + "}}", value)
            dest.write_text(text)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
