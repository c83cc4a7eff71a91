"""Index a video library for two-stage live search: every video's cells into the LanceDB `cells` table, and the
grids DRN grounds them from into the `<table>_inputs` table beside it (Ray Data).

    python -m jobs.index_library --checkpoint runs/syn/best.pt --features runs/syn/features --db index/
    python -m jobs.search "a red square moves left" --live --db index/

The checkpoint needs a trained retrieval stage (stage 4 of jobs.train, with model.retrieval_dim > 0). Rerunning
is harmless and resumes: videos that have cells are skipped, rows merge on (video_id, cell), and a store that
gained videos gets only their cells. The tables record the checkpoint and the store, so search needs only --db
(and, with the inputs table, never opens the feature store). Rerunning on an index built before the inputs
table existed adds that table and leaves the cells as they are. See docs/live_search.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobs.cli import job_main, run_with_flag_names
from jobs.library_args import add_resource_args, add_window_args, apply_progress_flag, library_job_parser


def build_parser() -> argparse.ArgumentParser:
    parser = library_job_parser(
        "python -m jobs.index_library",
        "Encode every ok video of a feature store with a checkpoint's retrieval stage and write one "
        "row per video cell (video_id, start_s, end_s, vector, checkpoint id) to the LanceDB 'cells' table, "
        "with a vector index (IVF-PQ once the table is large enough), and each video's pooled grids to the "
        "'<table>_inputs' table that live search grounds candidates from.",
        checkpoint_help="DRN checkpoint (.pt) with a trained retrieval stage", table="cells",
    )
    parser.add_argument("--videos", default=None,
                        help="only these videos: a comma-separated list or a file with one video id a line")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a cells table built from another checkpoint or store (no resume)")
    parser.add_argument("--no-inputs", action="store_true",
                        help="do not write the inputs table (live search then reads candidates from the store)")
    parser.add_argument("--inputs-dtype", choices=["float16", "float32"], default=None,
                        help="dtype of the stored grids; %(default)s: the store's dtype, which loses nothing")
    parser.add_argument("--vector-index-min-rows", type=int, default=50_000,
                        help="build the IVF-PQ index once the table holds this many rows (exact search below)")
    add_window_args(parser, "long videos (default: the checkpoint's grounding windows)", whole="encoded")
    add_resource_args(parser, "encoding", videos_per_batch=64, write_batch_rows=200_000)
    return parser


def run(args: argparse.Namespace) -> int:
    from moments.index import default_db_uri
    from moments.library import Resources, WindowOptions
    from moments.library.cell_indexing import IndexLibraryJob

    apply_progress_flag(args)
    job = IndexLibraryJob(
        args.checkpoint, args.features, args.db or default_db_uri(), table=args.table, videos=args.videos,
        overwrite=args.overwrite, windows=WindowOptions(args.window_s, args.window_stride_s, args.max_whole_s),
        resources=Resources(args.num_actors, args.num_gpus_per_actor, args.cpus_per_actor, args.videos_per_batch),
        write_batch_rows=args.write_batch_rows, max_videos=args.max_videos,
        vector_index_min_rows=args.vector_index_min_rows, inputs=not args.no_inputs, inputs_dtype=args.inputs_dtype,
    )
    summary = job.run()
    print(f"cells of checkpoint {summary.checkpoint_id}; {summary.window}")
    print(f"videos: {summary.videos_total} selected, {summary.videos_skipped} already indexed, "
          f"{summary.videos_done} indexed, {summary.videos_failed} failed; {summary.rows_written} rows written, "
          f"{summary.rows_in_table} in the table; indices created: {', '.join(summary.indices_created) or 'none'}")
    if summary.inputs_table:
        print(f"inputs: {summary.inputs_written} windows written, {summary.inputs_in_table} in the "
              f"'{summary.inputs_table}' table")
    for vid, error in summary.failures[:10]:
        print(f"  failed {vid}: {error}")
    print(summary.throughput_line())
    return 0


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    return run_with_flag_names(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
