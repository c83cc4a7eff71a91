"""Checking the search service's query parameters: every bad value becomes a `BadRequest` naming the parameter.

Parameters arrive as text (or absent). Each parser returns a clean value or raises `BadRequest`, which the
service answers with a 4xx status and a JSON message; nothing here touches the index or the file system.
"""

from __future__ import annotations

import math

from drn.text.sentence import is_blank

MAX_QUERY_CHARS = 1000  # MiniLM reads 256 word pieces at most; a longer text is not a search
MAX_K = 1000
DEFAULT_K = 10
MAX_CLIP_S = 600.0
MAX_NAME_CHARS = 512  # video and run ids
DEFAULT_FRAME_WIDTH = 320
MAX_FRAME_WIDTH = 1920
MIN_FRAME_WIDTH = 16
DEFAULT_MOMENTS = 200
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"", "0", "false", "no", "off"}


class BadRequest(Exception):
    """A request the service refuses: `status` (4xx), a message for people and the parameter at fault."""

    def __init__(self, message: str, *, status: int = 400, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.parameter = parameter

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message, "status": self.status}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return body


def quoted(value: str, width: int = 40) -> str:
    return repr(value if len(value) <= width else value[:width] + "...")


def query_text(value: str | None) -> str:
    """The search text: present, not blank, at most MAX_QUERY_CHARS characters."""
    if value is None or is_blank(value):  # blank, or only control characters (%00%00)
        raise BadRequest("q is empty: give some words to search for, e.g. ?q=someone+opens+a+door", parameter="q")
    if len(value) > MAX_QUERY_CHARS:
        raise BadRequest(f"q is {len(value):,} characters long; a search text has at most {MAX_QUERY_CHARS:,}",
                         parameter="q")
    return value.strip()


def whole_number(value: str | None, name: str, default: int, lowest: int, highest: int) -> int:
    """An integer in [lowest, highest]; `default` when absent or empty."""
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {quoted(value)}", parameter=name) from None
    if not lowest <= number <= highest:
        raise BadRequest(f"{name} must be between {lowest} and {highest}, not {number}", parameter=name)
    return number


def k_value(value: str | None) -> int:
    """How many results to return: 1 to MAX_K, default DEFAULT_K."""
    return whole_number(value, "k", DEFAULT_K, 1, MAX_K)


def seconds(value: str | None, name: str, *, required: bool = True) -> float | None:
    """A finite, non-negative number of seconds; None when absent and not required."""
    if value is None or value.strip() == "":
        if required:
            raise BadRequest(f"{name} is missing: give a time in seconds", parameter=name)
        return None
    number = finite_number(value, name)
    if number < 0:
        raise BadRequest(f"{name} must not be negative, not {number:g}", parameter=name)
    return number


def finite_number(value: str, name: str) -> float:
    """A finite float from text."""
    try:
        number = float(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {quoted(value)}", parameter=name) from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be a finite number, not {value.strip()!r}", parameter=name)
    return number


def min_score(value: str | None) -> float | None:
    """The lowest score to return, or None when absent."""
    if value is None or value.strip() == "":
        return None
    return finite_number(value, "min_score")


def name(value: str | None, parameter: str) -> str | None:
    """An id (video, run): None when absent or empty; a too long id is refused before any lookup."""
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME_CHARS:
        raise BadRequest(f"{parameter} is {len(value):,} characters long; ids have at most {MAX_NAME_CHARS}",
                         parameter=parameter)
    return value


def flag(value: str | None, parameter: str) -> bool:
    """A yes/no switch: 1/true/yes/on or 0/false/no/off (absent = no)."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"{parameter} must be 1 or 0, not {quoted(value)}", parameter=parameter)


def clip_span(start: str | None, end: str | None, duration_s: float) -> tuple[float, float] | None:
    """(start_s, end_s) of a clip inside a video of `duration_s`, or None when neither is given (whole video)."""
    if (start is None or start == "") and (end is None or end == ""):
        return None
    start_s = seconds(start, "start")
    end_s = seconds(end, "end")
    assert start_s is not None and end_s is not None
    if end_s <= start_s:
        raise BadRequest(f"end ({end_s:g} s) must come after start ({start_s:g} s)", parameter="end")
    if start_s >= duration_s:
        raise BadRequest(f"start ({start_s:g} s) is past the end of the video ({duration_s:g} s)",
                         parameter="start")
    if end_s - start_s > MAX_CLIP_S:
        raise BadRequest(f"a clip lasts at most {MAX_CLIP_S:g} s, not {end_s - start_s:g} s; ask for the whole "
                         "video (no start and end) and seek in it", parameter="end")
    return start_s, min(end_s, duration_s)


def frame_time(value: str | None, duration_s: float) -> float:
    """The time of a frame: within [0, duration_s]."""
    t = seconds(value, "t")
    assert t is not None
    if t > duration_s:
        raise BadRequest(f"t ({t:g} s) is past the end of the video ({duration_s:g} s)", parameter="t")
    return t


def frame_width(value: str | None) -> int:
    """The width of a frame picture in pixels."""
    return whole_number(value, "width", DEFAULT_FRAME_WIDTH, MIN_FRAME_WIDTH, MAX_FRAME_WIDTH)
