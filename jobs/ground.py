"""Ground a query collection against a whole video library and write the top segments to LanceDB, on Ray Data.

    python -m jobs.ground --checkpoint runs/syn/model/best.pt --features runs/syn/features --queries q.txt
    ray job submit --working-dir . -- python -m jobs.ground --checkpoint ckpt.pt --features s3://b/features \
        --queries s3://b/queries.jsonl --db s3://b/lancedb --num-gpus-per-actor 1 --num-actors 8

Each query is grounded in its --candidates best videos by the retrieval stage's `cells` table when the database
holds one built from the same checkpoint (--mode auto), else in every video (--exhaustive); each query keeps its
--keep-per-query best moments across the library. Rerunning with the same run id (the default is derived from the
checkpoint, the inputs and these settings) resumes: finished videos are skipped and rewritten rows merge, so each
(run, query, video, rank) is there once. See docs/grounding.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobs.cli import job_main, run_with_flag_names
from jobs.library_args import add_resource_args, add_window_args, apply_progress_flag, library_job_parser


def build_parser() -> argparse.ArgumentParser:
    parser = library_job_parser(
        "python -m jobs.ground",
        "Score every query of a collection against its candidate videos (or every ok video) of a feature store "
        "with a DRN checkpoint; write the top-k segments of each (query, video) to the LanceDB 'segments' "
        "table, with library-wide ranks per query, keeping each query's best moments.",
        checkpoint_help="DRN checkpoint (.pt) written by jobs.train", table="segments",
    )
    parser.add_argument("--queries", required=True,
                        help="query collection: a text file (one query a line) or a .jsonl file with "
                             "'query_id' and 'query' per line")
    parser.add_argument("--run-id", default=None,
                        help="run id of the rows (default: run-<hash of checkpoint, store, queries, top-k, windows>)")
    parser.add_argument("--videos", default=None,
                        help="only these videos: a comma-separated list or a file with one video id a line")
    parser.add_argument("--top-k", type=int, default=5, help="segments kept per (query, video) after NMS")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a table with another schema, and delete this run's rows first (no resume)")
    pairs = parser.add_argument_group("which pairs, how many rows")
    modes = pairs.add_mutually_exclusive_group()
    modes.add_argument("--mode", choices=("auto", "candidates", "exhaustive"), default="auto",
                       help="candidates: each query is grounded in its --candidates best videos by the 'cells' table "
                            "of the same checkpoint (jobs.index_library); exhaustive: every query x every video; "
                            "auto: candidates when such a cells table exists, else exhaustive")
    modes.add_argument("--exhaustive", action="store_const", const="exhaustive", dest="mode",
                       default=argparse.SUPPRESS, help="the same as --mode exhaustive")
    pairs.add_argument("--candidates", type=int, default=20, metavar="N",
                       help="videos per query in candidate mode (each query's N best by their best cell)")
    pairs.add_argument("--keep-per-query", default="100", metavar="M",
                       help="moments kept per query across the library (the M best by score), or 'all'")
    pairs.add_argument("--cells-table", default="cells", help="the cells table of candidate mode")
    add_window_args(parser, "long videos (default: from the checkpoint or the dataset's training durations; see "
                    "docs/grounding.md)", whole="grounded")
    work = add_resource_args(parser, "grounding", videos_per_batch=16, write_batch_rows=50_000)
    work.add_argument("--pair-batch-size", type=int, default=256, help="(query, video) pairs per forward pass")
    work.add_argument("--capacity-wait-s", type=float, default=120.0,
                      help="when lost nodes leave the cluster too small for the actors, stop (exit 1, naming the "
                           "missing resource) after this many seconds; rerun to resume")
    return parser


def run(args: argparse.Namespace) -> int:
    from drn.errors import InputError
    from moments.library.queries import read_queries

    keep = keep_per_query(args.keep_per_query)
    if args.candidates < 1:
        raise InputError(f"--candidates must be at least 1 video per query, not {args.candidates}")
    collection = read_queries(args.queries)  # before the heavy imports: a bad collection fails at once
    if collection.dropped:
        print(f"{len(collection.dropped)} query line(s) skipped:")
        print(collection.report())
    print(f"{len(collection)} queries from {args.queries}")

    from moments.library import GroundingJob, Resources, WindowOptions

    apply_progress_flag(args)
    job = GroundingJob(
        args.checkpoint, args.features, collection, db=args.db, table=args.table, run_id=args.run_id,
        videos=args.videos, top_k=args.top_k, overwrite=args.overwrite,
        windows=WindowOptions(args.window_s, args.window_stride_s, args.max_whole_s),
        resources=Resources(args.num_actors, args.num_gpus_per_actor, args.cpus_per_actor, args.videos_per_batch,
                            args.pair_batch_size, args.capacity_wait_s),
        write_batch_rows=args.write_batch_rows, max_videos=args.max_videos, candidates=args.candidates,
        mode=args.mode, keep_per_query=keep, cells_table=args.cells_table,
    )
    summary = job.run()
    encoded_drops = summary.dropped_queries[len(collection.dropped):]
    for line, reason in encoded_drops:
        print(f"{args.queries}, line {line}: {reason}")
    print(f"run {summary.run_id} with checkpoint {summary.checkpoint_id}; {summary.window}")
    print(summary.mode_line())
    unpicked = f", {summary.videos_unpicked} picked by no query" if summary.mode == "candidates" else ""
    print(f"videos: {summary.videos_total} selected{unpicked}, {summary.videos_skipped} already done, "
          f"{summary.videos_done} grounded, {summary.videos_failed} failed; {summary.rows_written} rows written, "
          f"{summary.rows_dropped} dropped (outside each query's best), {summary.rows_in_run} in the run")
    for vid, error in summary.failures[:10]:
        print(f"  failed {vid}: {error}")
    print(summary.throughput_line())
    return 0


def keep_per_query(value: str) -> int | None:
    """--keep-per-query: a count of at least 1, or 'all' (None: every moment is kept)."""
    from drn.errors import InputError

    if value.strip().lower() == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise InputError(f"--keep-per-query must be a whole number or 'all', not {value!r}") from None
    if count < 1:
        raise InputError(f"--keep-per-query must be at least 1 (or 'all' to keep every moment), not {count}")
    return count


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    return run_with_flag_names(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
