"""Search the segments index: `python -m jobs.search "someone opens a door" --db lancedb`.

Answers from the LanceDB table that `jobs.ground` wrote: the stored queries nearest to the text in meaning and
in words, and their best segments across the library. `--live` grounds a new text now, in two stages: the
nearest video cells in the `cells` table that `jobs.index_library` wrote, then DRN on those candidate videos
only (`moments.search.two_stage`). `--exhaustive` grounds it against every video (`ground_every_video`).
With `DRN_SERVE=http://host:port` set, indexed searches go to a running search service (`python -m jobs.serve`),
which has the index and the model loaded already; its access token comes from `DRN_SERVE_TOKEN`, the file
`DRN_SERVE_TOKEN_FILE` or `--token-file`. Each path imports only what it needs: indexed search needs neither torch
nor sentence-transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pyarrow as pa

from drn.errors import InputError
from jobs.cli import flag_names, job_main
from moments.index.results import format_results
from moments.serve.auth import refuse_token_values


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `python -m jobs.search`."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.search",
        description="Find moments in the video library: the stored queries nearest to TEXT in meaning and in "
        "words, and their best segments (video, start-end in seconds, score).",
        epilog='example: python -m jobs.search "someone opens the fridge" --db lancedb --k 5 --min-score 0.3',
    )
    parser.add_argument("text", help="what to look for, in plain words")
    parser.add_argument("--db", default=None, help="LanceDB URI: a folder or s3://... (default: $DRN_DB or ./lancedb)")
    parser.add_argument("--table", default="segments", help="table name (default: segments)")
    parser.add_argument("--k", type=int, default=10, help="number of segments to show (default: 10)")
    parser.add_argument("--video", default=None, metavar="ID",
                        help="only segments of this video (with --live: that video is grounded, one DRN pass)")
    parser.add_argument("--min-score", type=float, default=None, metavar="X", help="only segments scoring >= X")
    parser.add_argument("--run-id", default=None, metavar="R", help="only segments of this grounding run")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per segment) instead of a table")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="with DRN_SERVE: the file holding the search service's access token (default: "
                        "$DRN_SERVE_TOKEN, else the file $DRN_SERVE_TOKEN_FILE)")
    refuse_token_values(parser)
    live = parser.add_argument_group(
        "live search (ground TEXT now; two stages: ANN over the cells table, then DRN on the candidate videos)")
    live.add_argument("--live", action="store_true",
                      help="search the cells table of --db (built by jobs.index_library), then ground the "
                           "candidate videos with the checkpoint it names")
    live.add_argument("--exhaustive", action="store_true",
                      help="ground the text against every video instead (slow on large libraries; needs "
                           "--checkpoint and --features, or a cells table that names them)")
    live.add_argument("--checkpoint", default=None, metavar="C",
                      help="DRN checkpoint (with --live: must be the one the cells table was built with)")
    live.add_argument("--features", default=None, metavar="S",
                      help="feature store URI (default with --live: the one the cells table names)")
    live.add_argument("--cells", type=int, default=300, metavar="N", help="cells taken by ANN (default: 300)")
    live.add_argument("--candidates", type=int, default=20, metavar="M",
                      help="candidate videos grounded by DRN (default: 20)")
    live.add_argument("--fusion-weight", type=float, default=0.6, metavar="W",
                      help="share of the retrieval score in the final score, 0 to 1 (default: 0.6)")
    live.add_argument("--cells-table", default=None, help="cells table name (default: cells)")
    live.add_argument("--save", action="store_true", help="with --exhaustive: also write the results to the index")
    return parser


def run_live(args: argparse.Namespace) -> pa.Table:
    """Two-stage live search over the cells table of `args.db` (moments.search.two_stage)."""
    from moments.index import CELLS_TABLE, default_db_uri
    from moments.search.two_stage import MissingCellsTableError, TwoStageOptions, TwoStageSearcher

    db, table = args.db or default_db_uri(), args.cells_table or CELLS_TABLE
    options = TwoStageOptions(cells=args.cells, candidates=args.candidates, fusion_weight=args.fusion_weight)
    try:
        searcher = TwoStageSearcher(db, args.checkpoint, args.features, table=table, options=options)
    except MissingCellsTableError:
        raise InputError(f"there is no '{table}' table for two-stage --live search: build it first with "
                         f"python -m jobs.index_library --checkpoint CHECKPOINT --features STORE --db {db} "
                         "(or search every video with --exhaustive)", path=db) from None
    for notice in searcher.notices:  # e.g. an index without its inputs table: how to add it
        print(f"note: {notice}", file=sys.stderr)
    return searcher.search(args.text, k=args.k, min_score=args.min_score, video_id=args.video)


def run_exhaustive(args: argparse.Namespace) -> pa.Table:
    """Ground `args.text` against every video with `args.checkpoint` (moments.library.every_video)."""
    from drn.text.sentence import check_spellable
    from moments.index import default_db_uri
    from moments.library import ground_every_video

    check_spellable(args.text)
    checkpoint, features = args.checkpoint, args.features
    if checkpoint is None or features is None:  # the cells table of --db names them
        from moments.index import CELLS_TABLE, CellsTable

        cells = CellsTable(args.db or default_db_uri(), args.cells_table or CELLS_TABLE)
        if not cells.exists:
            raise InputError("--exhaustive needs --checkpoint and --features (or a --db whose cells table names "
                             "them)")
        checkpoint, features = checkpoint or cells.info.checkpoint, features or cells.info.features
    return ground_every_video(
        args.text, checkpoint, features, k=args.k, videos=[args.video] if args.video else None,
        min_score=args.min_score, save=args.save, db=args.db or default_db_uri(), table=args.table,
    )


def run_search(args: argparse.Namespace) -> tuple[pa.Table, list[str]]:
    """Answer from the index: the rows and the notices to show beside them."""
    from moments.index import Index, default_db_uri

    index = Index(args.db or default_db_uri(), table=args.table)
    answer = index.answer(args.text, k=args.k, video_id=args.video, min_score=args.min_score, run_id=args.run_id)
    return answer.rows, answer.notices()


def run_remote(args: argparse.Namespace, address: str) -> tuple[pa.Table, list[str]]:
    """Ask the search service at `address` ($DRN_SERVE), which has the index and the model loaded already."""
    from drn.errors import InputError
    from moments.serve.client import SERVE_ENV, remote_search, service_token

    if args.db is not None or args.table != "segments":
        raise InputError(f"--db/--table name a local index, but {SERVE_ENV} sends searches to the service at "
                         f"{address}; unset {SERVE_ENV} to search another index")
    rows, notices = remote_search(address, args.text, k=args.k, video=args.video, min_score=args.min_score,
                                  run_id=args.run_id, token=service_token(args.token_file))
    return pa.Table.from_pylist(rows), notices


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.live and args.exhaustive:
        parser.error("choose --live (two stages) or --exhaustive (every video), not both")
    if args.save and not args.exhaustive:
        parser.error("--save works with --exhaustive (two-stage results cover the candidate videos only)")
    if args.k < 1:
        parser.error("--k must be at least 1")
    live = args.live or args.exhaustive
    if live and not args.text.strip():
        raise InputError("the query text is empty; give some words to search for")
    from moments.serve.client import service_address

    remote = None if live else service_address()  # DRN_SERVE: a running service answers, fast
    if args.token_file is not None and not remote:
        raise InputError("--token-file is the search service's token: it goes with DRN_SERVE=http://host:port and "
                         "an indexed search (not --live or --exhaustive)")
    if live:
        from moments.index import SearchAnswer

        with flag_names(parser):
            results = run_live(args) if args.live else run_exhaustive(args)
        notices = SearchAnswer.of_live_search(args.text, results).notices()
    elif remote:
        results, notices = run_remote(args, remote)
    else:
        results, notices = run_search(args)
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        for row in results.to_pylist():
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
