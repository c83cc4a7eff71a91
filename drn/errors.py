"""The error every loader and job raises for bad input: one line that names the file, line or field."""

from __future__ import annotations

SHOWN_PATH_CHARS = 120  # a longer path (often a list given where a path was expected) is shortened in messages


def shown(path: object, limit: int = SHOWN_PATH_CHARS) -> str:
    """``path`` as text for a one-line message: cut to ``limit`` characters, with its full length, when longer."""
    text = str(path)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text)} characters)"


class InputError(ValueError):
    """Bad user input (a file, a line in it, a field, a flag). The message is meant to be shown as is."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = shown(path)
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line
