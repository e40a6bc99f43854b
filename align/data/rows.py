"""Reading the rows of public JSON-lines files, and what happens to bad rows.

Dimension letters: none (rows are dicts of text and numbers).

A row is one non-blank line of a (possibly gzipped) JSON-lines file. A bad row is named by
`<file>:<line>`, a kind from BAD_KINDS and what is wrong. With the policy "error" (the
default) the first bad row stops the build with a `BadRowError`; with "skip" it is left
out and counted by kind, and the build reports the counts (and where the first of each
kind was). Rows left out by a documented rule of a format (e.g. tied ratings) are not
bad: they are counted as `excluded` under their reason. Blank lines are not rows; they
are counted as excluded "blank_line" too, so nothing is dropped without a count.

A damaged file is not a bad row. A gzipped file that is truncated, is not gzip at all, or
holds corrupt compressed data (bad deflate data, a failed CRC or length check, trailing
bytes that are not gzip) raises a one-line `DataError` naming the file, the last complete
line read before the damage, what is wrong and what to do (download it again; `gzip -t
FILE` checks it), under "skip" as well: the rows past the damage cannot be read, so
skipping would build a dataset from part of a file as if it were whole. Corrupt deflate
data can decompress to garbage lines before the damage is detected (a CRC is checked at
the end of the stream); so under "error" a bad row found in a gzipped file first checks
the rest of the file, and reports the damage, not the row, when the file is damaged.
A file that cannot be opened or read (missing, a directory, no permission, an I/O error)
is an error naming the file too.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import os
import zlib
from typing import Any, Callable, Iterator, Mapping

from align import errors

POLICIES = ("error", "skip")
BAD_KINDS = (
    "not_json",               # the line is not a JSON object
    "invalid_utf8",           # the line's bytes (or a decoded string) are not valid UTF-8
    "missing_field",          # a required field is absent (or null)
    "wrong_type",             # a field has the wrong type or shape
    "empty_completion",       # a completion / reply / summary is empty or only whitespace
    "identical_pair",         # chosen and rejected are the same text
    "out_of_range",           # a rating, score or choice outside its allowed range
    "unsplittable_dialogue",  # an HH-RLHF pair that does not split into prompt + two replies
)


class BadRow(Exception):
    """What is wrong with one row: a kind from BAD_KINDS and a detail."""

    def __init__(self, kind: str, detail: str):
        if kind not in BAD_KINDS:
            raise ValueError(f"unknown bad-row kind {kind!r}; valid: {BAD_KINDS}")
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class BadRowError(errors.DataError):
    """A bad row under the policy "error": the message names the file, line and problem."""

    def __init__(self, where: str, kind: str, detail: str):
        super().__init__(f"{where}: bad row ({kind}): {detail}. To skip and count such rows "
                         "instead, set bad_rows='skip' (config: data.bad_rows=skip)")
        self.where, self.kind, self.detail = where, kind, detail


class RowLog:
    """Applies a bad-row policy and counts bad and excluded rows by kind."""

    def __init__(self, policy: str = "error"):
        if policy not in POLICIES:
            raise errors.ConfigError(f"bad_rows must be one of {POLICIES}, got {policy!r}",
                                     key="data.bad_rows")
        self.policy = policy
        self.bad_counts: collections.Counter = collections.Counter()
        self.first_bad: dict[str, str] = {}
        self.excluded: collections.Counter = collections.Counter()
        self.rows = 0  # rows read (bad ones included) and counted by this log
        self._reading = None  # (name, path, file, line) of the gzipped file being read

    def bad(self, where: str, kind: str, detail: str, *, count: bool = True) -> None:
        """Raises under "error"; under "skip" counts the row (when `count`) and returns."""
        if self.policy == "error":
            error = BadRowError(where, kind, detail)
            if self._reading is not None:
                # Garbage from corrupt gzip data is the file's damage, not a bad row.
                self._check_rest(f"{where} ({kind})", error)
            raise error
        if count:
            self.bad_counts[kind] += 1
            self.first_bad.setdefault(kind, f"{where}: {detail}")

    def exclude(self, reason: str, *, count: bool = True) -> None:
        if count:
            self.excluded[reason] += 1

    def lines(self, name: str, path: str | os.PathLike, *, count: bool = True
              ) -> Iterator[tuple[str, dict]]:
        """(where, row) for each JSON-object line of a file; gzip when the name ends in .gz.

        `count=False` reads without counting or reporting unreadable lines (for a pass over a
        file whose rows another pass has already counted); under "error" they still raise.
        A damaged or unreadable file raises whatever the policy (module docstring).
        """
        gz = str(name).endswith(".gz")
        f = _open(name, path, gz)
        number = 0  # the last complete line read
        try:
            with f:
                raws = iter(f)
                while True:
                    try:
                        raw = next(raws)
                    except StopIteration:
                        break
                    except (EOFError, zlib.error, OSError) as e:
                        raise self._damaged(name, path, number, e) from e
                    number += 1
                    where = f"{name}:{number}"
                    # While a row of a gzipped file is out, a bad row checks the rest (bad()).
                    self._reading = (name, path, f, number) if gz else None
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._count_row(count)
                        self.bad(where, "invalid_utf8", f"byte {raw[e.start]:#04x} at column "
                                 f"{e.start + 1} is not valid UTF-8", count=count)
                        continue
                    if not text.strip():
                        self.exclude("blank_line", count=count)
                        continue
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as e:
                        self._count_row(count)
                        self.bad(where, "not_json", f"not JSON ({e.msg} at column {e.colno})",
                                 count=count)
                        continue
                    if not isinstance(row, dict):
                        self._count_row(count)
                        self.bad(where, "not_json", f"a JSON {type(row).__name__}, not an object",
                                 count=count)
                        continue
                    yield where, row
        finally:
            self._reading = None

    def _damaged(self, name: str, path: str | os.PathLike, number: int, e: BaseException,
                 bad_row: str = "") -> errors.DataError:
        """The one-line error of a file damaged or unreadable after `number` complete lines."""
        reached = (f"after line {number}, the last complete line read" if number
                   else "before its first complete line")
        if bad_row:
            reached += f" (its first bad row, {bad_row}, is likely garbage from the damage)"
        if isinstance(e, EOFError):
            what = ("truncated gzip stream (the file ends before gzip's end-of-stream marker: "
                    "a download or copy cut short, or corrupt data?)")
        elif isinstance(e, gzip.BadGzipFile) and not _starts_as_gzip(path):
            what = ("not a gzip file (its name ends in .gz but it does not start with gzip's "
                    "bytes 1f 8b; if it is plain JSON lines, compress it with `gzip`)")
        elif isinstance(e, gzip.BadGzipFile) and str(e).startswith("Not a gzipped file"):
            what = f"corrupt gzip data (bytes after the end of the gzip stream are not gzip: {e})"
        elif isinstance(e, (zlib.error, gzip.BadGzipFile)):
            what = f"corrupt gzip data ({e})"
        else:
            return errors.DataError(f"{name}: read failed {reached}: "
                                    f"{getattr(e, 'strerror', None) or e}")
        note = ("; data.bad_rows=skip does not apply: a damaged file is not a bad row, and the "
                "rows past the damage cannot be read, so skipping would build from part of the "
                "file as if it were whole" if self.policy == "skip" else "")
        return errors.DataError(f"{name}: damaged file: {what} {reached}. Download it again "
                                f"(check it with `gzip -t {os.fspath(path)}`){note}")

    def _check_rest(self, bad_row: str, error: BadRowError) -> None:
        """Reads the rest of the gzipped file being read; raises its damage as a DataError."""
        name, path, f, number = self._reading
        self._reading = None
        try:
            for _ in f:
                number += 1
        except (EOFError, zlib.error, OSError) as e:
            raise self._damaged(name, path, number, e, bad_row) from error

    def _count_row(self, count: bool) -> None:
        if count:
            self.rows += 1

    def parse(self, where: str, fn: Callable[..., Any], *args: Any, count: bool = True) -> Any:
        """fn(*args), or None when it raises BadRow (after applying the policy)."""
        self._count_row(count)
        try:
            return fn(*args)
        except BadRow as e:
            self.bad(where, e.kind, e.detail, count=count)
            return None

    def summary(self) -> dict:
        """Counts as plain JSON: rows read, bad rows by kind (and the first of each), excluded."""
        return {"policy": self.policy, "rows": self.rows,
                "bad_rows": dict(sorted(self.bad_counts.items())),
                "first_bad": dict(sorted(self.first_bad.items())),
                "excluded": dict(sorted(self.excluded.items()))}


def _open(name: str, path: str | os.PathLike, gz: bool):
    """The file opened for binary reading; an error naming the file when it cannot be."""
    where = name if os.fspath(path) == str(name) else f"{name} ({os.fspath(path)})"
    try:
        return gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as e:
        message = f"cannot open {where}: {e.strerror or e}"
        for cls in (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            if isinstance(e, cls):
                raise cls(message) from e
        raise errors.DataError(message) from e


def _starts_as_gzip(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return True  # unknown: call it corrupt rather than not gzip


# ---------------------------------------------------------------- field checks (raise BadRow)


def field(row: Mapping, key: str, what: str = "") -> Any:
    """row[key]; missing or null is a "missing_field" bad row."""
    name = f"{what}.{key}" if what else key
    if not isinstance(row, Mapping):
        raise BadRow("wrong_type", f"{what or 'row'} must be an object, got {type(row).__name__}")
    if key not in row:
        raise BadRow("missing_field", f"field {name!r} is missing (fields present: {sorted(row)})")
    if row[key] is None:
        raise BadRow("missing_field", f"field {name!r} is null")
    return row[key]


def text(row: Mapping, key: str, what: str = "") -> str:
    """A text field that encodes as UTF-8 (JSON escapes can hold lone surrogates)."""
    value = field(row, key, what)
    name = f"{what}.{key}" if what else key
    if not isinstance(value, str):
        raise BadRow("wrong_type", f"field {name!r} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow("invalid_utf8", f"field {name!r} holds {value[e.start]!r} at {e.start}, "
                     "which is not valid UTF-8") from e
    return value


def items(row: Mapping, key: str, what: str = "") -> list:
    value = field(row, key, what)
    if not isinstance(value, list):
        name = f"{what}.{key}" if what else key
        raise BadRow("wrong_type", f"field {name!r} must be a list, got {type(value).__name__}")
    return value


def number(row: Mapping, key: str, lo: float, hi: float, what: str = "") -> float:
    """A finite number field within [lo, hi]; outside is "out_of_range"."""
    value = field(row, key, what)
    name = f"{what}.{key}" if what else key
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRow("wrong_type", f"field {name!r} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRow("out_of_range", f"field {name!r} is {value}, outside [{lo:g}, {hi:g}]")
    return float(value)


def nonempty(value: str, name: str) -> str:
    if not value.strip():
        raise BadRow("empty_completion", f"{name} is empty ({value!r})")
    return value


def distinct(chosen: str, rejected: str) -> None:
    if chosen == rejected:
        raise BadRow("identical_pair", f"chosen and rejected are the same text ({chosen[:60]!r})")
