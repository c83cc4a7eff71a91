"""A query collection: the texts a grounding run scores against the library.

Two formats, told apart by the file name:

* ``*.jsonl``: one JSON object a line with ``query_id`` (string or int) and ``query`` (the text);
* anything else: plain text, one query a line; the id is the 0-based line number (counted before any line is
  dropped, so ids never shift when a line is cleaned away, as for pair ids in DESIGN.md section 6).

Blank queries and repeated queries (the same words after trimming, collapsing spaces and ignoring case) are
dropped and reported; the first occurrence is kept. One id used for two different texts, a line that is not JSON,
or a missing field is an :class:`~drn.errors.InputError` naming the file and line. A collection with no query
left is an error too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from drn.datasets.reading import parse_json_line
from drn.errors import InputError
from drn.store.object_store import filesystem_for


@dataclass(frozen=True)
class Query:
    """One query of a collection: its id (a string) and its text, trimmed."""

    query_id: str
    text: str
    line: int = 0  # where it came from (1-based; 0 when not from a file)


@dataclass
class QueryCollection:
    """The usable queries in file order, and what was dropped (``(line, reason)``, lines counted from 1)."""

    source: str
    queries: list[Query]
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def ids(self) -> list[str]:
        return [q.query_id for q in self.queries]

    @property
    def texts(self) -> list[str]:
        return [q.text for q in self.queries]

    def report(self) -> str:
        """One line per dropped query (empty string when nothing was dropped)."""
        return "\n".join(f"{self.source}, line {line}: {reason}" for line, reason in self.dropped)


def normalise_text(text: str) -> str:
    """The form used to spot repeated queries: trimmed, single spaces, lower case."""
    return " ".join(text.split()).lower()


def _read_text(uri: str) -> str:
    fs, path = filesystem_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError("query file not found", path=uri)
    if info.type != pafs.FileType.File:
        raise InputError("the query collection must be a file (text or JSONL), not a folder", path=uri)
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", path=uri) from None


def _parse_jsonl_line(raw: str, uri: str, line: int) -> tuple[str, str]:
    item = parse_json_line(raw, uri, line)
    for name in ("query_id", "query"):
        if name not in item:
            raise InputError(f"missing field '{name}'", path=uri, line=line)
    query_id, text = item["query_id"], item["query"]
    if isinstance(query_id, bool) or not isinstance(query_id, (str, int)) or str(query_id).strip() == "":
        raise InputError(f"field 'query_id' must be a non-empty string or an integer, not {query_id!r}",
                         path=uri, line=line)
    if not isinstance(text, str):
        raise InputError(f"field 'query' must be a string, not {type(text).__name__}", path=uri, line=line)
    return str(query_id).strip(), text


def read_queries(uri: str | os.PathLike) -> QueryCollection:
    """Read a query collection (a local path or an object-store URI); see the module docstring."""
    uri = os.fspath(uri)
    content = _read_text(uri)
    is_jsonl = uri.lower().endswith(".jsonl")
    queries: list[Query] = []
    dropped: list[tuple[int, str]] = []
    first_line_of_text: dict[str, int] = {}
    text_of_id: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(content.splitlines()):
        line = number + 1
        if is_jsonl:
            if not raw.strip():
                continue  # blank lines between JSON objects are layout, not queries
            query_id, text = _parse_jsonl_line(raw, uri, line)
        else:
            query_id, text = str(number), raw
        text = " ".join(text.split())
        if not text:
            dropped.append((line, f"query {query_id}: empty query, skipped"))
            continue
        seen = text_of_id.get(query_id)
        if seen is not None and seen[0] != text:
            raise InputError(f"query_id {query_id!r} is used again for another text (first on line {seen[1]})",
                             path=uri, line=line)
        key = normalise_text(text)
        if key in first_line_of_text:
            dropped.append((line, f"query {query_id}: repeats line {first_line_of_text[key]}, skipped"))
            continue
        first_line_of_text[key] = line
        text_of_id[query_id] = (text, line)
        queries.append(Query(query_id, text, line))
    if not queries:
        raise InputError("the query collection holds no query" + (" (only blank or repeated lines)" if dropped
                                                                   else ""), path=uri)
    return QueryCollection(uri, queries, dropped)
