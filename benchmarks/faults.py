"""Random fault injection, longer runs: kill each library job with SIGKILL at random instants, rerun, compare.

    python benchmarks/faults.py                                   # 20 kills of each job (extract, index_library,
                                                                  # ground, train), a random seed
    python benchmarks/faults.py --job ground --kills 20 --seed 7  # one job, a fixed seed
    python benchmarks/faults.py --job ground --kill-seed 123456   # replay one kill by its printed seed

Every kill prints ``kill seed=S delay=Ds`` and whether it landed during a write; the end is a table (job, kills,
differences, kills during a write, kills after the run had committed part of its output, misses, clean run, wall
time) and the machine, for benchmarks/RESULTS.md.
How a job is killed, what is compared and what counts as a kill during a write: benchmarks/fault_harness.py.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import load_average, machine
from fault_harness import JOBS, SIZES, JobReport, run_job


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--job", action="append", choices=sorted(JOBS), default=None,
                        help="a job to kill (repeatable; default: all four)")
    parser.add_argument("--kills", type=int, default=20, help="kills per job")
    parser.add_argument("--seed", type=int, default=None, help="master seed of the kills (default: random)")
    parser.add_argument("--kill-seed", type=int, action="append", default=None,
                        help="replay these kill seeds (repeatable) instead of drawing --kills of them")
    parser.add_argument("--chain", type=int, default=1,
                        help="kills in a row before each rerun to completion (1: every kill is its own trial)")
    parser.add_argument("--size", choices=sorted(SIZES), default="bench", help="input sizes (ci: the CI test's)")
    parser.add_argument("--ray", choices=("local", "cluster"), default="local",
                        help="local: each run starts its own Ray, killed with the job; cluster: runs join one Ray "
                             "head started for the job, and a kill takes the driver only")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep every trial's output (default: failed ones)")
    return parser


def table(reports: list[JobReport]) -> str:
    head = ["| job | kills | differences | kills during a write | kills after a commit | misses | clean run (s) | "
            "wall (s) |", "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + [r.line() for r in reports])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    jobs = args.job or list(JOBS)
    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    print(f"fault injection: jobs {', '.join(jobs)}; seed={seed}; {args.kills} kills per job, chain {args.chain}, "
          f"size {args.size}, Ray {args.ray}; work in {work}", flush=True)
    started, reports = time.perf_counter(), []
    for name in jobs:
        reports.append(run_job(name, work / name, kills=len(args.kill_seed or []) or args.kills, seed=seed,
                               chain=args.chain, size=args.size, inputs=work / "inputs", seeds=args.kill_seed,
                               keep=args.keep, ray=args.ray,
                               say=lambda line: print(line, flush=True)))
    print(f"\nmachine: {machine()}; load average at the end {load_average()}; "
          f"{time.perf_counter() - started:.0f} s in all; seed={seed}")
    print(table(reports))
    for report in reports:
        print(f"{report.job}: {report.swept} of {report.kills} kills found processes of the job outside its process "
              "group (Ray's workers), killed one by one; none may outlive a kill by 30 s")
    for report in reports:
        for difference in report.differences:
            print(f"{report.job}: {difference}")
    failed = any(r.differences for r in reports)
    if args.work is None and not failed and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    elif failed:
        print(f"outputs of the failed trials are in {work}; replay with --seed {seed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
