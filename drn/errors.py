"""The error every loader and job raises for bad input: one line that names the file, line or field."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file, a line in it, a field, a flag). The message is meant to be shown as is."""

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line
