"""One exception type for every user-facing failure.

The CLI turns an :class:`FGMError` into a single line on stderr (problem, then fix) and a
non-zero exit; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FGMError(Exception):
    """A problem the user can fix. ``hint`` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class FGMWarning(UserWarning):
    """A setting that works but that fgm advises against; the CLI prints it as one line
    ``fgm: warning: <problem> (<fix>)``."""


class PluginError(FGMError):
    """A plugin failed to load, register, or run; the message names the plugin."""


def unknown_name(kind: str, name: str, available: Iterable[str]) -> FGMError:
    """Error for an unknown component name, listing what exists and the closest match."""
    names = sorted(available)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return FGMError(
        f"unknown {kind} {name!r}",
        f"{hint}available: {', '.join(names) or 'none'}; see `fgm plugins`",
    )
