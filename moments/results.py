"""Search results as text: the table that ``jobs.search`` and the demo print."""

from __future__ import annotations

import pyarrow as pa


def format_results(results: pa.Table) -> str:
    """A readable table: rank, query matched, video, start-end in seconds, score."""
    if results.num_rows == 0:
        return "no segments found"
    rows = results.to_pylist()
    header = ("#", "query matched", "video", "start-end (s)", "score")
    lines = [
        (str(row["result_rank"] + 1), shorten(row["query_text"], 48), shorten(row["video_id"], 24),
         f"{row['start_s']:.2f}-{row['end_s']:.2f}", f"{row['score']:.3f}")
        for row in rows
    ]
    widths = [max(len(header[c]), *(len(line[c]) for line in lines)) for c in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    out += ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
