"""The DRN paper's ablations (Tables 4 to 6) rerun on the synthetic benchmark (drn.datasets.synthetic), several seeds.

    python benchmarks/ablations.py [--quick] [--seeds 0 1 2] [--videos 250] [--noise 1.5] [--threads 1] \
        [--only full center none] [--json-out runs/ablations.json]

Each seed writes one synthetic benchmark (features + JSONL, seeded) and trains every variant on it with the same
training seed, so the variants of one seed see the same data and the same batches. A variant is the synthetic
preset plus config overrides (the switches of docs/model.md); stages 1, 2 and 3 as configured (stage 2 is skipped
without a quality head). Checkpoints are picked on the validation split; the test split is scored once per run.
Prints a table of test R@1 / R@5 at IoU 0.5 and 0.7 and mIoU (mean +- standard deviation over seeds), with the
paper's Charades-STA R@1,IoU=0.5 where DESIGN.md gives it, and whether the change moves the way the paper's does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from drn.baselines import fit_fixed_window, fixed_window_predictions
from drn.config import load_config
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.evaluation import evaluate
from drn.training import fit, stages_from_config
from drn.training_setup import TrainingData, prepare_training_data

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET = REPO_ROOT / "configs" / "synthetic.yaml"
METRICS = ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")


@dataclass(frozen=True)
class Variant:
    """One row of the paper's ablation tables: a name, its config overrides and the paper's R@1,IoU=0.5."""

    table: str
    name: str
    overrides: tuple[str, ...]
    paper_r1_05: float | None = None  # Charades-STA, C3D (DESIGN.md section 5); None where DESIGN.md gives none


FULL = Variant("all", "full DRN (all positives, IoU head, MLF, location)", (), 45.40)
VARIANTS = (
    FULL,
    Variant("4", "positives: centre only", ("targets.positives=center",), 38.36),
    Variant("4", "positives: one at random", ("targets.positives=random",)),
    Variant("4", "positives: central half", ("targets.positives=half",)),
    Variant("5", "quality: centerness", ("model.quality=centerness",), 44.02),
    Variant("5", "quality: none (m alone)", ("model.quality=none",), 44.13),
    Variant("6", "no multi-level fusion", ("model.multi_level_fusion=false",)),
    Variant("6", "MLF-Same (one attention)", ("model.same_query_all_levels=true",)),
    Variant("6", "no location embedding", ("model.use_location_embedding=false",)),
)
KEYS = {"full": FULL, "center": VARIANTS[1], "random": VARIANTS[2], "half": VARIANTS[3], "centerness": VARIANTS[4],
        "none": VARIANTS[5], "no_mlf": VARIANTS[6], "mlf_same": VARIANTS[7], "no_loc": VARIANTS[8]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (60 videos, 1 seed, 2 epochs, 3 variants) that checks the script in < 1 min")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="benchmark and training seeds")
    parser.add_argument("--videos", type=int, default=250, help="synthetic videos per seed (70/10/20 split)")
    parser.add_argument("--dim", type=int, default=32, help="feature dimension D of the synthetic store")
    parser.add_argument("--noise", type=float, default=1.5, help="background noise std (synthetic default 0.5)")
    parser.add_argument("--signal", type=float, default=1.5, help="event signature strength (default 1.5)")
    parser.add_argument("--min-event", type=float, default=0.08, help="shortest event, fraction of the video")
    parser.add_argument("--max-event", type=float, default=0.35, help="longest event, fraction of the video")
    parser.add_argument("--stage1-epochs", type=int, default=8)
    parser.add_argument("--stage2-epochs", type=int, default=2)
    parser.add_argument("--stage3-epochs", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(KEYS), default=None, help="run only these variants")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--work-dir", type=Path, default=None, help="output folder (default: a tmp dir)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write every run's metrics as JSON")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="train nothing: print the table of runs saved with --json-out (e.g. one file per seed, "
                        "run as separate processes)")
    return parser


def variant_config(variant: Variant, args: argparse.Namespace, seed: int):
    overrides = [f"model.feature_dim={args.dim}", f"train.seed={seed}",
                 f"train.stage1.epochs={args.stage1_epochs}", f"train.stage2.epochs={args.stage2_epochs}",
                 f"train.stage3.epochs={args.stage3_epochs}", *variant.overrides]
    return load_config(PRESET, overrides)


def run_variant(variant: Variant, data: TrainingData, args: argparse.Namespace, seed: int, out: Path) -> dict:
    """Train one variant on one seed's data; its test metrics (checkpoint picked on val) and wall time."""
    config = variant_config(variant, args, seed)
    torch.manual_seed(seed)
    model = data.new_model()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs, out,
                 stages_from_config(config), data.loader("test"), data.test.pairs)
    return {"variant": variant.name, "seed": seed, "stage": result.best_stage, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started,
            "val": result.val, "test": result.test}


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def direction(variant: Variant, runs: list[dict], full_runs: list[dict]) -> str:
    """Does the ablation lower R@1,IoU=0.5 as in the paper (where the full model is best)? Paired by seed."""
    if variant is FULL:
        return ""
    full = {r["seed"]: r["test"]["R@1,IoU=0.5"] for r in full_runs}
    diffs = [r["test"]["R@1,IoU=0.5"] - full[r["seed"]] for r in runs if r["seed"] in full]
    if not diffs:
        return "?"
    mean = statistics.mean(diffs)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    word = "yes" if mean < 0 else "no"
    if len(diffs) > 1 and abs(mean) <= spread:
        word += " (within spread)"
    return f"{word}: {mean:+.1f}"


def table(variants: list[Variant], runs: list[dict], floor: list[float]) -> str:
    by_name = {v.name: [r for r in runs if r["variant"] == v.name] for v in variants}
    full_runs = by_name.get(FULL.name, [])
    header = ["table", "variant", *METRICS, "stage picked", "paper R@1,IoU=0.5",
              "paper's direction (Δ R@1,IoU=0.5 vs full)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        rows = by_name[v.name]
        cells = [v.table, v.name] + [mean_spread([r["test"][m] for r in rows]) for m in METRICS]
        cells.append(",".join(str(r["stage"]) for r in sorted(rows, key=lambda r: r["seed"])))
        paper = f"{v.paper_r1_05:.2f}" if v.paper_r1_05 is not None else "-"
        cells += [paper, direction(v, rows, full_runs) if full_runs else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| - | fixed window (no video, fitted on train) | {mean_spread(floor)} | | | | | | - | |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> int:
    """Print the table of several ``--json-out`` files (runs of the same variants, other seeds)."""
    runs, floor, walls = [], [], []
    for path in paths:
        saved = json.loads(path.read_text())
        runs += saved["runs"]
        floor += saved["fixed_window_r1_05"]
        walls.append(saved["wall_s"])
    names = {r["variant"] for r in runs}
    variants = [v for v in VARIANTS if v.name in names]
    print(table(variants, runs, floor))
    print(f"\n{len(runs)} runs from {len(paths)} files, seeds {sorted({r['seed'] for r in runs})}; "
          f"wall per file {', '.join(f'{w:.0f} s' for w in walls)}; CPU seconds of training per run "
          f"{statistics.mean(r.get('cpu_seconds', math.nan) for r in runs):.1f} on average")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        return merge(args.merge)
    if args.quick:
        args.videos, args.seeds = 60, args.seeds[:1]
        args.stage1_epochs, args.stage2_epochs, args.stage3_epochs = 2, 1, 1
        args.only = args.only or ["full", "center", "none"]
    torch.set_num_threads(args.threads)
    variants = [KEYS[k] for k in args.only] if args.only else list(VARIANTS)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="drn-ablations-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s), "
          f"load average at start {os.getloadavg()[0]:.1f}; work dir {work}", file=sys.stderr)
    started = time.perf_counter()
    runs: list[dict] = []
    floor: list[float] = []
    for seed in args.seeds:
        bench = make_synthetic_benchmark(work / f"syn{seed}", num_videos=args.videos, feature_dim=args.dim, seed=seed,
                                         noise=args.noise, signal=args.signal,
                                         event_fraction=(args.min_event, args.max_event))
        data = prepare_training_data(variant_config(FULL, args, seed), bench.features, bench.annotations)
        window = fit_fixed_window(data.train.pairs)
        floor.append(evaluate(data.test.pairs, {p.qid: p for p in fixed_window_predictions(data.test.pairs, window)})
                     .recall[(1, 0.5)])
        print(f"seed {seed}: pairs train {len(data.train)} val {len(data.val)} test {len(data.test)}", file=sys.stderr)
        for index, variant in enumerate(variants):
            run = run_variant(variant, data, args, seed, work / f"runs{seed}" / str(index))
            runs.append(run)
            print(f"  {variant.name}: test R@1,IoU=0.5 {run['test']['R@1,IoU=0.5']:.1f}, "
                  f"R@1,IoU=0.7 {run['test']['R@1,IoU=0.7']:.1f} ({run['seconds']:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    wall = time.perf_counter() - started
    print(table(variants, runs, floor))
    print(f"\n{len(runs)} runs, seeds {args.seeds}, {args.videos} videos per seed, noise {args.noise}, signal "
          f"{args.signal}, events {args.min_event:.2f}-{args.max_event:.2f} of the video; epochs "
          f"{args.stage1_epochs}/{args.stage2_epochs}/{args.stage3_epochs}; wall {wall:.0f} s (training CPU time "
          f"{sum(r['cpu_seconds'] for r in runs):.0f} s); load average at end "
          f"{os.getloadavg()[0]:.1f}")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                             "fixed_window_r1_05": floor, "wall_s": wall}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
