"""One exception type for every user-facing failure.

The CLI turns an :class:`FGMError` into a single line on stderr (problem, then fix) and a
non-zero exit; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


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


#: what fgm catches around a call into plugin code and reports by the plugin's name: any
#: error, and ``sys.exit()``, which must never end fgm silently. Ctrl-C still interrupts.
PLUGIN_FAILURES = (Exception, SystemExit)


def unknown_name(kind: str, name: str, available: Iterable[str]) -> FGMError:
    """Error for an unknown component name, listing what exists and the closest match."""
    names = sorted(available)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return FGMError(
        f"unknown {kind} {name!r}",
        f"{hint}available: {', '.join(names) or 'none'}; see `fgm plugins`",
    )


class Interrupted(KeyboardInterrupt):
    """A stop request (SIGINT / Ctrl-C or SIGTERM) that was honoured: ``step`` is the step of
    the checkpoint written at the stop (None: aborted by a second signal before it). The CLI
    prints the message and exits with 128 + ``signum`` (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int, step: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.signum = signum
        self.step = step

    def __str__(self) -> str:
        return self.message


def os_error_text(e: OSError) -> str:
    """One phrase for an ``OSError`` the user can fix (a file where a folder should be, a
    permission, a full disk), naming the file."""
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and not Path(str(e.filename)).is_dir():
        return f"{e.filename} (or a folder above it) is not a directory"
    return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
