"""Reading annotation files with errors that name the file and line (UTF-8 only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from drn.errors import InputError


def read_text(path: Path) -> str:
    """The whole file as text; a missing file, non-UTF-8 bytes or an empty file is an InputError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", path=path, line=line) from None
    if not text.strip():
        raise InputError("file is empty", path=path)
    return text


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a text file as ``(1-based line number, line without its newline)``."""
    return [(number, line) for number, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def read_json(path: Path) -> Any:
    """A parsed JSON document; a syntax error names the line."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None


def parse_json_line(text: str, path: Path | str, line: int) -> dict[str, Any]:
    """One JSONL record, which must be a JSON object."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=path, line=line) from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", path=path, line=line)
    return record


def as_seconds(value: Any, field: str, path: Path, line: int | None = None) -> float:
    """A finite number (bools and strings refused), for time fields."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"field {field!r} must be a number, got {value!r}", path=path, line=line)
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"field {field!r} must be finite, got {value!r}", path=path, line=line)
    return number


def parse_seconds(text: str, field: str, path: Path, line: int) -> float:
    """A finite number written as text (the Charades-STA and CSV files)."""
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"field {field!r} is not a number: {text!r}", path=path, line=line) from None
    if not math.isfinite(number):
        raise InputError(f"field {field!r} must be finite, got {text!r}", path=path, line=line)
    return number
