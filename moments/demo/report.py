"""What the demo prints and keeps: the step headers with their timings, the lines of each step and ``DemoReport``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from moments.demo.settings import DEFAULT_OUT, RUN_NAME, DemoPaths

STEPS = 7


@dataclass
class DemoReport:
    """What the demo did: per-step seconds, the evaluation table, the grounding run and the searches."""

    paths: DemoPaths
    seconds: dict[str, float] = field(default_factory=dict)
    library: dict[str, Any] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    grounding: dict[str, Any] = field(default_factory=dict)
    searches: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)  # video_first: {"hits", "queries"} across the library

    def to_json(self) -> str:
        data = asdict(self)
        data["paths"] = {name: str(getattr(self.paths, name)) for name in
                         ("out", "videos", "annotations", "features", "runs", "eval", "db", "queries")}
        return json.dumps(data, indent=2, default=str)


class StepPrinter:
    """Step headers with their timings: ``[2/7] Extracting C3D features`` ... ``done in 81.2 s``."""

    def __init__(self, report: DemoReport, echo: Callable[[str], None] = print, total: int = STEPS) -> None:
        self.report, self.echo, self.total, self.number = report, echo, total, 0
        self.started = time.perf_counter()

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        self.number += 1
        self.echo(f"\n[{self.number}/{self.total}] {title}")
        began = time.perf_counter()
        yield
        seconds = time.perf_counter() - began
        self.report.seconds[key] = round(seconds, 1)
        self.echo(f"    done in {seconds:.1f} s (total {time.perf_counter() - self.started:.1f} s)")

    def finish(self) -> float:
        total = time.perf_counter() - self.started
        self.report.seconds["total"] = round(total, 1)
        return total


def indented(text: str, by: str = "    ") -> str:
    """Every line of ``text`` indented under the step header."""
    return "\n".join(by + line for line in text.splitlines())


def epoch_line(metrics: dict[str, Any], epochs: dict[int, int]) -> str:
    """One finished training epoch (``moments.train.EpochWatcher``): loss, validation R@1 and speed."""
    stage = int(metrics["stage"])
    return (f"    stage {stage} epoch {int(metrics['epoch'])}/{epochs.get(stage, '?')}: "
            f"loss {metrics.get('loss_total', float('nan')):.3f}, "
            f"val R@1,IoU=0.5 {metrics.get('val_R@1,IoU=0.5', float('nan')):.1f} "
            f"({metrics.get('pairs_per_s', 0):.1f} pairs/s)")


def format_comparison(results: dict[str, dict[str, Any]]) -> str:
    """The evaluation table: one row per method, R@1 and R@5 at IoU 0.3/0.5/0.7 and mIoU, in percent."""
    columns = ["R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7"]
    width = max(len(name) for name in results)
    header = "method".ljust(width) + "".join(f"  {c:>11}" for c in columns) + "   mIoU"
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        cells = "".join(f"  {result['recall'][c]:>11.2f}" for c in columns)
        lines.append(f"{name.ljust(width)}{cells}  {result['miou']:5.2f}")
    first = next(iter(results.values()))
    lines.append(f"{first['num_queries']} test queries on {first['videos']} held-out videos; "
                 f"convention: {first['convention']['text']}")
    return "\n".join(lines)


def video_hits_note(hits: dict[str, int], videos: int, config) -> str:
    """What the library ranks say: how often a video holding the moment came first, and why."""
    measured = (f"a video that holds the moment came first for {hits['at_1']} of {hits['queries']} held-out queries "
                f"(top 5: {hits['at_5']}) among {videos} videos")
    k = config.train.negatives.per_positive
    if k > 0:
        return (f"library ranks: {measured}. Training paired each query with {k} videos that do not hold it "
                "(negative pairs),\n    so scores compare across videos (docs/training.md).")
    return (f"note: trained without negative pairs, DRN's scores rank segments within a video, not videos across the "
            f"library: {measured}.")


def where_things_are(paths: DemoPaths) -> str:
    """The closing note: where each output is and how to open the notebook."""
    out = paths.out
    return "\n".join([
        f"videos and annotations  {paths.library}",
        f"feature store           {paths.features}",
        f"checkpoints             {paths.runs / RUN_NAME} (best.pt, summary.json)",
        f"predictions (test)      {paths.eval}",
        f"search index (LanceDB)  {paths.db}",
        f"report                  {paths.marker}",
        "",
        f'search:    python -m jobs.search "a red circle moves up" --db {paths.db}',
        f"watch:     python -m jobs.serve --db {paths.db} --features {paths.features} --videos {paths.videos}",
        "           then open http://127.0.0.1:8000/ (or run the demo with --serve)",
        f"explore:   DRN_DB={paths.db} DRN_FEATURES={paths.features} DRN_ANNOTATIONS={paths.annotations} "
        "jupyter lab notebooks/explore_results.ipynb",
        f"           (the notebook's defaults already point at {DEFAULT_OUT}/; set the variables for --out {out};",
        "           set-up installs no notebook server: pip install jupyterlab)",
    ])
