"""Search results as text: the table that ``jobs.search`` and the demo print."""

from __future__ import annotations

import pyarrow as pa


def format_results(results: pa.Table) -> str:
    """A readable table: rank, query matched, whether it is the searched text, video, start-end in seconds, score."""
    if results.num_rows == 0:
        return "no segments found"
    rows = results.to_pylist()
    header = ("#", "query matched", "match", "video", "start-end (s)", "score")
    lines = [
        (str(row["result_rank"] + 1), shorten(row["query_text"], 48), match_label(row), shorten(row["video_id"], 24),
         f"{row['start_s']:.2f}-{row['end_s']:.2f}", f"{row['score']:.3f}")
        for row in rows
    ]
    widths = [max(len(header[c]), *(len(line[c]) for line in lines)) for c in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    out += ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def match_label(row: dict) -> str:
    """``same``, ``paraphrase 0.98`` or ``OTHER 0.81``: whether a row answers the searched text
    (``moments.index.table.Index.answer``); rows without the column (older callers) read as ``same``."""
    match = row.get("query_match") or "same"
    if match == "same":
        return "same"
    return f"{'paraphrase' if match == 'paraphrase' else 'OTHER'} {row.get('query_similarity') or 0:.2f}"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
