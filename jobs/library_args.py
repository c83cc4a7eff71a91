"""Flags shared by the jobs that run a model over a whole library on Ray Data (jobs.ground, jobs.index_library)."""

from __future__ import annotations

import argparse


def library_job_parser(prog: str, description: str, *, checkpoint_help: str, table: str) -> argparse.ArgumentParser:
    """The parser of a job over a whole library: --checkpoint, then --features, --db and --table."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    add_common_args(parser, table=table)
    return parser


def add_common_args(parser: argparse.ArgumentParser, table: str) -> None:
    """--features, --db and --table (whose default is ``table``)."""
    parser.add_argument("--features", required=True, help="feature store (a folder or an object-store URI)")
    parser.add_argument("--db", default=None, help="LanceDB URI: a folder or s3://... (default: $DRN_DB or ./lancedb)")
    parser.add_argument("--table", default=table, help="table name")


def add_window_args(parser: argparse.ArgumentParser, title: str, whole: str) -> None:
    """The long-video window flags (--window-s, --window-stride-s, --max-whole-s); ``whole`` says what a short
    video gets ("grounded", "encoded")."""
    windows = parser.add_argument_group(title)
    windows.add_argument("--window-s", type=float, default=None, help="window length in seconds")
    windows.add_argument("--window-stride-s", type=float, default=None,
                         help="seconds between windows (default: half a window)")
    windows.add_argument("--max-whole-s", type=float, default=None,
                         help=f"videos up to this long are {whole} whole, longer ones in windows")


def add_resource_args(parser: argparse.ArgumentParser, actor: str, videos_per_batch: int,
                      write_batch_rows: int) -> argparse._ArgumentGroup:
    """The actor, batch and progress flags; ``actor`` says what an actor does ("grounding", "encoding").
    Returns the group, for a job's own flags."""
    work = parser.add_argument_group("resources")
    work.add_argument("--num-actors", type=int, default=1, help=f"{actor} actors (each holds the model)")
    work.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0: CPU)")
    work.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (torch threads on CPU)")
    work.add_argument("--videos-per-batch", type=int, default=videos_per_batch, help="videos per actor call")
    work.add_argument("--write-batch-rows", type=int, default=write_batch_rows, help="rows per LanceDB merge")
    work.add_argument("--max-videos", type=int, default=None,
                      help="do at most this many of the videos still to do (a trial; rerun to finish)")
    work.add_argument("--no-progress", action="store_true", help="no progress bars")
    return work


def apply_progress_flag(args: argparse.Namespace) -> None:
    """--no-progress turns off Ray Data's progress bars for this driver."""
    if args.no_progress:
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
