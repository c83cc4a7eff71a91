"""Build a feature store from features computed elsewhere: per-video .npy/.pt files or one HDF5 file.

    python -m jobs.import_features --npy features/ --out store/ --clip-len 16 --clip-stride 8 --fps 30
    python -m jobs.import_features --hdf5 sub_activitynet_v1-3.c3d.hdf5 --out store/ --fps 30 --layer fc7-pca500

See docs/extraction.md (importers).
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import job_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.import_features",
        description="Turn per-video feature arrays or an HDF5 file (one group per video) into a feature store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--npy", nargs="+", metavar="PATH",
                        help=".npy or .pt files ([N, D] each; the id is the file stem) or folders of them")
    source.add_argument("--hdf5", metavar="FILE", help="an HDF5 file with one group per video")
    parser.add_argument("--dataset", default="c3d_features", help="the dataset inside each HDF5 group")
    parser.add_argument("--out", required=True, help="the feature store to write")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip of the imported features")
    parser.add_argument("--clip-stride", type=int, default=8, help="frames between clip starts")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate the clips were sampled at")
    parser.add_argument("--extractor", default=None, help="name recorded as drn.extractor")
    parser.add_argument("--layer", default="unknown", help="name recorded as drn.layer")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature type")
    return parser


@job_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.importers import ClipTiming, import_arrays, import_hdf5

    timing = ClipTiming(args.clip_len, args.clip_stride, args.fps)
    if args.hdf5:
        summary = import_hdf5(args.hdf5, args.out, timing, dataset=args.dataset, layer=args.layer,
                              dtype=args.dtype, extractor=args.extractor or "imported-hdf5")
    else:
        summary = import_arrays(args.npy, args.out, timing, layer=args.layer, dtype=args.dtype,
                                extractor=args.extractor or "imported")
    print(f"done: {summary.done}  failed: {summary.failed}  store: {args.out}")
    for vid, error in (summary.failures or [])[:10]:
        print(f"  failed {vid}: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
