"""The environment variables fgm reads, parsed in one place: a malformed value is one clear
error that names the variable, never a usage block or an internal error.

- ``FGM_STRICT_PLUGINS``, ``FGM_NO_PROGRESS``, ``FGM_NO_PLUGIN_COMMANDS``: yes/no flags
  (``1/true/yes/on`` or ``0/false/no/off``; unset or empty is no).
- ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``: the integers torchrun sets.
- ``FGM_PLUGINS``, ``FGM_PLUGINS_TOML``, ``FGM_CACHE_DIR``: free text (see their users).
"""

from __future__ import annotations

import os

from fgm_core.errors import FGMError

FLAGS = ("FGM_STRICT_PLUGINS", "FGM_NO_PROGRESS", "FGM_NO_PLUGIN_COMMANDS")
INTEGERS = (("WORLD_SIZE", 1, 1), ("RANK", 0, 0), ("LOCAL_RANK", 0, 0))
_YES = {"1", "true", "yes", "on"}
_NO = {"", "0", "false", "no", "off"}


def flag(name: str) -> bool:
    """A yes/no environment variable."""
    value = os.environ.get(name, "")
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise FGMError(
        f"environment variable {name}={value!r} is not a yes/no value", f"set {name}=1 or {name}=0, or unset it"
    )


def integer(name: str, default: int, minimum: int = 0) -> int:
    """A non-negative integer environment variable (unset or empty: ``default``)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise FGMError(
            f"environment variable {name}={value!r} is not an integer of at least {minimum}",
            f"unset {name}, or set it as torchrun does",
        )
    return int(value)


def check() -> None:
    """Parse every variable above once, before a command does any work (so a bad value
    never leaves anything half-done)."""
    for name in FLAGS:
        flag(name)
    for name, default, minimum in INTEGERS:
        integer(name, default, minimum)
