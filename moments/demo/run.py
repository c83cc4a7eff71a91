"""``run_demo``: the whole project on an embedded default (DESIGN.md section 1, item 7), step by step.

``run_demo(DemoSettings(out="demo_output"))`` generates a synthetic video library, extracts C3D features with
random weights on local Ray Data, trains DRN's three stages on Ray Train, evaluates on the held-out test queries
beside the no-video baselines, grounds the test queries against the whole library into a local LanceDB and runs a
few searches. The steps are in ``moments.demo.steps``, what is printed in ``moments.demo.report``.

Output folder layout (``DemoPaths``): ``library/`` (videos and JSONL annotations), ``features/`` (the feature
store), ``runs/`` (Ray Train storage; ``runs/demo/best.pt`` is the chosen checkpoint), ``eval/`` (prediction files
of the model and the baselines), ``lancedb/`` (the ``segments`` table), ``queries.txt`` and ``demo.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from drn.store.object_store import local_path
from moments.demo.report import (
    DemoReport,
    StepPrinter,
    format_comparison,
    indented,
    video_hits_note,
    where_things_are,
)
from moments.demo.settings import RUN_NAME, DemoPaths, DemoSettings, prepare_output
from moments.demo.steps import (
    demo_config,
    evaluate_on_test,
    extract_features,
    generate_library,
    ground_collection,
    library_video_hits,
    library_vocabulary,
    query_collection,
    run_searches,
    search_texts,
    train_model,
    two_stage_search,
)
from pipeline.ray_runtime import start_ray

__all__ = ["DemoPaths", "DemoReport", "DemoSettings", "run_demo", "two_stage_search", "where_things_are"]


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> DemoReport:
    """All steps in order; ``echo`` receives every line the demo prints. Ray is started locally if needed.

    Bad settings or an unusable output folder raise ``moments.demo.settings.SettingError`` or ``InputError``
    before any work."""
    settings.check()
    paths = prepare_output(settings.out, settings.force)
    report = DemoReport(paths)
    steps = StepPrinter(report, echo)
    start_ray(quiet=True)
    paths.marker.write_text(json.dumps({"status": "running", "settings": settings.to_dict()}, indent=2))

    with steps.step("generate", f"Generating a synthetic video library ({settings.size} videos)"):
        report.library = generate_library(settings, paths)
        echo(f"    {report.library['videos']} videos ({report.library['codec']}) in {paths.videos}; "
             f"queries per split {report.library['queries']}")
    with steps.step("extract", "Extracting C3D features (Ray Data)"):
        report.extraction = extract_features(settings, paths, echo)
    with steps.step("train", "Training DRN, three stages (Ray Train)"):
        report.training = train_model(settings, paths, echo)
    checkpoint = report.training["best_checkpoint"]
    with steps.step("evaluate", "Evaluating on the held-out test queries, beside the no-video baselines"):
        report.evaluation = evaluate_on_test(paths, checkpoint)
        echo(indented(format_comparison(report.evaluation)))
    with steps.step("ground", "Grounding the query collection against the library (LanceDB)"):
        texts = query_collection(paths)
        echo(f"    {len(texts)} distinct test queries -> {paths.queries}")
        report.grounding = ground_collection(paths, checkpoint, f"{RUN_NAME}-seed{settings.seed}", settings.use_gpu,
                                             echo)
    with steps.step("search", "Searching the index"):
        report.searches = run_searches(paths, search_texts(texts, library_vocabulary(paths)), echo=echo)
        live = two_stage_search(paths.features, paths.db, local_path(checkpoint) or checkpoint,
                                report.searches[-1]["text"], echo=echo)
        report.searches += [live] if live else []
        hits = library_video_hits(paths, report.grounding["run_id"])
        report.grounding["video_hits"] = hits
        report.search = {"video_first": {"hits": hits["at_1"], "queries": hits["queries"]},
                         "video_top5": {"hits": hits["at_5"], "queries": hits["queries"]}}
        echo(f"\n    {video_hits_note(hits, report.grounding['videos'], demo_config(settings))}")
    with steps.step("report", "Where everything is"):
        echo(indented(where_things_are(paths)))
    total = steps.finish()
    paths.marker.write_text(json.dumps({"status": "done", "settings": settings.to_dict(),
                                        "report": json.loads(report.to_json())}, indent=2))
    echo(f"\nThe demo took {total:.0f} s ({total / 60:.1f} min).")
    return report
