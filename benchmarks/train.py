"""Distributed training throughput: training pairs/s per stage with 1 and 2 Ray Train workers.

    .venv/bin/python benchmarks/train.py [--out runs/bench-train] [--quick]     # from the repository root

Two workloads on the synthetic feature-level benchmark (``drn.datasets.synthetic``):

* ``synthetic``: configs/synthetic.yaml (D=64, T=16, the small network), batch 32;
* ``charades-size``: configs/charades_sta.yaml sizes (D=4096, T=32, the full ~39 M-parameter DRN), batch 32,
  on synthetic features of D=4096, from which the CPU epoch time of Charades-STA (12,404 training pairs) is
  estimated (an estimate from the measured rate, not a measurement).

Each run trains one epoch per stage; pairs/s is what the workers measure over the epoch's training steps
(validation, start-up and checkpointing excluded); "wall" is the whole stage including Ray Train start-up.
Prints a Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # moments/ is imported from the checkout (Ray workers: from the working directory)

import ray  # noqa: E402

from drn.config import load_config  # noqa: E402
from drn.datasets.synthetic import make_synthetic_benchmark  # noqa: E402
from moments.train.driver import fit_distributed  # noqa: E402

CHARADES_TRAIN_PAIRS = 12404
ONE_EPOCH = ["train.stage1.epochs=1", "train.stage2.epochs=1", "train.stage3.epochs=1", "train.batch_size=32"]
# (workload, config, feature dim, videos, [(workers, cpus per worker)])
WORKLOADS = [
    ("synthetic", "configs/synthetic.yaml", 64, 160, [(1, 2.0), (2, 1.0)]),
    ("charades-size", "configs/charades_sta.yaml", 4096, 40, [(1, 2.0), (2, 1.0)]),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-train")
    parser.add_argument("--quick", action="store_true", help="synthetic workload only")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    load_before = os.getloadavg()[0]
    rows = []
    for workload, config_path, dim, videos, setups in WORKLOADS[:1] if args.quick else WORKLOADS:
        bench = make_synthetic_benchmark(args.out / f"data-{workload}", num_videos=videos, feature_dim=dim)
        overrides = [*ONE_EPOCH, f"model.feature_dim={dim}", "dataset=jsonl", "text.max_words=12"]
        config = load_config(ROOT / config_path, overrides)
        for workers, cpus in setups:
            started = time.perf_counter()
            summary = fit_distributed(config, bench.features, bench.annotations, num_workers=workers,
                                      cpus_per_worker=cpus, threads=int(cpus), storage=args.out / "runs",
                                      name=f"{workload}-w{workers}", max_failures=0, keep_checkpoints=1)
            total = time.perf_counter() - started
            for record in summary["stages"]:
                rows.append((workload, dim, config.model.num_segments, workers, cpus, record["stage"],
                             record["pairs_per_s"][0], record["seconds"], summary["pairs"]["train"], total))
    load_after = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} x {cpu_name()}, load average {load_before:.1f} before / "
          f"{load_after:.1f} after")
    print("| workload | D | T | workers x CPUs | stage | train pairs | pairs/s | stage wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for workload, dim, t, workers, cpus, stage, rate, wall, pairs, _ in rows:
        print(f"| {workload} | {dim} | {t} | {workers} x {cpus:g} | {stage} | {pairs} | {rate:.1f} | {wall:.1f} |")
    for workload, dim, _, workers, cpus, stage, rate, *_ in rows:
        if workload == "charades-size" and stage in (1, 3):
            print(f"estimate: Charades-STA epoch ({CHARADES_TRAIN_PAIRS} pairs, D={dim}, T=32, batch 32), stage "
                  f"{stage}, {workers} x {cpus:g} CPU: {CHARADES_TRAIN_PAIRS / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
