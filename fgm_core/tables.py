"""What may go wrong reading a NumPy file, and the one CSV reader: ``fgm train`` (dataset ``array``) and ``fgm encode``/``score`` read
text tables the same way.

A table is one row per item, fields separated by ``,``, tab or ``;`` (whichever the first
row uses) or by whitespace; lines starting with ``#`` and blank lines are skipped. The first
row is a header when one of its value fields is not a number. Every row must have as many
fields as the first: a longer or shorter row is an error naming its line, never cut to fit.
"""

from __future__ import annotations

import tokenize
import zipfile
from pathlib import Path

import numpy as np

from fgm_core.errors import FGMError
from fgm_core.storage import MAX_DATA_BYTES, read_input

CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
#: what ``np.load`` of a damaged .npy/.npz raises (a cut file, a bad zip, a header that is not
#: a Python literal: SyntaxError or tokenize's TokenError); each means "not a valid NumPy file"
NUMPY_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    SyntaxError,
    tokenize.TokenError,
    TypeError,
    KeyError,
    OverflowError,
)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv(
    path: Path, label_column: int | None = None, prefix: str = ""
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(values (N, D) float64, labels (N,) str or None, whether there was a header row).

    ``label_column``: index (may be negative) of a column kept apart as text labels.
    ``prefix`` starts every error message (e.g. the dataset's name).
    """

    def err(problem: str, hint: str) -> FGMError:
        return FGMError(f"{prefix}{path}: {problem}", hint)

    try:
        text = read_input(Path(path), "data file", MAX_DATA_BYTES).decode()
    except FileNotFoundError:
        raise err("not found", "check the path") from None
    except PermissionError:
        raise err("permission denied", "fix its permissions") from None
    except (OSError, UnicodeDecodeError) as e:
        raise err(f"cannot be read as text ({e})", "give a plain-text CSV file") from None
    numbered = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]
    if not numbered:
        raise err("is empty", "give one row per item")
    first = numbered[0][1]
    delim = next((d for d in (",", "\t", ";") if d in first), None)

    def split(line: str) -> list[str]:
        return [f.strip().strip('"') for f in (line.split(delim) if delim else line.split())]

    fields = split(first)
    ncol = len(fields)
    label_col = None
    if label_column is not None:
        if not -ncol <= label_column < ncol:
            raise err(
                f"label_column {label_column} is out of range for {ncol} columns",
                f"use 0..{ncol - 1} or -1 for the last",
            )
        label_col = label_column % ncol
    value_cols = [i for i in range(ncol) if i != label_col]
    if not value_cols:
        raise err("has no value columns besides the label column", "check label_column")
    header = not all(_is_number(fields[i]) for i in value_cols)
    body = numbered[1:] if header else numbered
    if not body:
        raise err("has a header but no data rows", "add data rows")
    for lineno, line in body:  # numpy would drop the extra fields of a longer row (usecols)
        count = line.count(delim) + 1 if delim else len(line.split())
        if count != ncol:
            raise err(
                f"line {lineno} has {count} columns, expected {ncol} (as in line {numbered[0][0]})",
                "give every row the same number of columns",
            )
    rows = [ln for _, ln in body]
    try:
        data = np.loadtxt(rows, delimiter=delim, usecols=value_cols, ndmin=2, dtype=np.float64)
        labels = (
            np.loadtxt(rows, delimiter=delim, usecols=[label_col], dtype=str, ndmin=1)
            if label_col is not None
            else None
        )
    except ValueError as e:
        for lineno, line in body:  # slow path, only on failure: find the offending field
            f = split(line)
            bad = next((i for i in value_cols if not _is_number(f[i])), None)
            if bad is not None:
                raise err(
                    f"line {lineno}, column {bad + 1}: {f[bad]!r} is not a number",
                    "only a header row (the first line) may hold text; use label_column for a text label column",
                ) from None
        raise err(f"is not a numeric table: {e}", "check the delimiter and columns") from None
    if labels is not None:
        labels = np.char.strip(np.char.strip(labels), '"')
    return data, labels, header
