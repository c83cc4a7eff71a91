"""notebooks/explore_results.ipynb: committed without outputs, and runs top to bottom against a small real index."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.text.sentence import embed_texts
from moments.index import Index, query_rows, segment_rows
from pipeline.synthetic import make_library

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_results.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for number, cell in enumerate(code):
        assert cell.get("outputs") == [], f"code cell {number} has outputs"
        assert cell.get("execution_count") is None, f"code cell {number} has an execution count"
    assert notebook.metadata.kernelspec.name == "python3"


def test_parameters_come_from_the_environment():
    source = nbformat.read(NOTEBOOK, as_version=4).cells[1].source
    for name in ("DRN_DB", "DRN_FEATURES", "DRN_ANNOTATIONS"):
        assert f'os.environ.get("{name}"' in source


def build_small_index(root: Path) -> dict[str, str]:
    """Three tiny synthetic videos, a feature store naming them, an index with rows for every query x video."""
    library = make_library(root / "library", num_videos=3, seed=5, min_duration_s=3.0, max_duration_s=4.0,
                           width=64, height=48)
    pairs = []
    for split in ("train", "val", "test"):
        for line in (root / "library" / "annotations" / f"{split}.jsonl").read_text().splitlines():
            pairs.append(json.loads(line))
    videos = sorted((root / "library" / "videos").glob("*.mp4"))
    durations = {p["video_id"]: p["duration_s"] for p in pairs}
    rng = np.random.default_rng(0)
    metadata = StoreMetadata("c3d", "fc6", "random-seed0", 16, 16, "4", 8, "float32")
    with FeatureStoreWriter(root / "features", metadata) as writer:
        for video in videos:
            duration = durations[video.stem]
            starts = np.arange(0.0, duration - 1.0, 1.0)
            writer.add_clips(video.stem, rng.random((len(starts), 8)), starts, starts + 1.0)
            writer.finish_video(VideoRecord(video.stem, str(video), fps=25.0, num_frames=int(duration * 25),
                                            duration_s=duration, width=64, height=48, num_clips=len(starts)))
    texts = list(dict.fromkeys(p["query"] for p in pairs))
    vectors = embed_texts(texts)
    truth = {(p["query"], p["video_id"]): (p["start_s"], p["end_s"]) for p in pairs}
    rows = []
    for q, text in enumerate(texts):
        for video in videos:
            duration = durations[video.stem]
            start, end = truth.get((text, video.stem), (0.2 * duration, 0.6 * duration))
            segments = np.array([[start, end, 0.9, 0.95, 0.95],
                                 [0.0, 0.5 * duration, 0.3, 0.6, 0.5],
                                 [0.5 * duration, duration, 0.1, 0.4, 0.25]])
            segments[:, 2:] *= rng.uniform(0.5, 1.0)
            rows += segment_rows("nb-run", "test-ckpt", q, text, video.stem, segments)
    index = Index(root / "lancedb")
    index.write_queries(query_rows("nb-run", "test-ckpt", range(len(texts)), texts, vectors))
    index.write_segments(rows)
    index.update_library_ranks("nb-run")
    assert library["videos"] == 3
    return {"DRN_DB": str(root / "lancedb"), "DRN_FEATURES": str(root / "features"),
            "DRN_ANNOTATIONS": str(root / "library" / "annotations"), "DRN_RUN_ID": "", "DRN_QUERY": ""}


def run_notebook(monkeypatch, env: dict[str, str]) -> list:
    """Execute the notebook with ``env`` as it runs in Jupyter; the outputs of its code cells."""
    from nbclient import NotebookClient

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ.get('PATH', '')}")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # as Jupyter runs it
    client.execute()  # raises CellExecutionError on the first failing cell
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    outputs = run_notebook(monkeypatch, build_small_index(tmp_path))
    assert not [out for out in outputs if out.output_type == "error"]
    text = "\n".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "showing run 'nb-run'" in text and "3 videos" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 4  # timelines, distributions, frames, recall
    tables = [out["data"]["text/plain"] for out in outputs if "text/plain" in out.get("data", {})]
    recall = [table for table in tables if "IoU" in table and "split" in table]
    assert recall, "the recall table is missing"
    # every annotated pair's own segment is its best one, so recall is 100 at every threshold
    assert "100.0" in recall[0] and "0.0 " not in recall[0].replace("100.0", "")



@pytest.mark.slow
def test_notebook_reads_the_index_the_store_and_the_frames_from_object_storage(tmp_path, monkeypatch, s3_env):
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from drn.store import FeatureStore
    from drn.store.object_store import filesystem_for

    local = build_small_index(tmp_path)
    bucket = s3_env.new_bucket()
    videos = s3_env.upload_folder(tmp_path / "library" / "videos", bucket, "videos")
    db = s3_env.upload_folder(local["DRN_DB"], bucket, "lancedb")
    features = s3_env.upload_folder(local["DRN_FEATURES"], bucket, "features")
    fs, root = filesystem_for(features)  # the store's videos now live in the bucket too
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/videos")):
        table = pq.read_table(info.path, filesystem=fs)
        uris = pc.utf8_replace_slice(table["uri"], 0, len(str(tmp_path / "library" / "videos")), videos)
        pq.write_table(table.set_column(table.schema.get_field_index("uri"), "uri", uris), info.path, filesystem=fs)
    assert all(uri.startswith(f"{videos}/") for uri in FeatureStore(features).videos()["uri"].to_pylist())
    outputs = run_notebook(monkeypatch, {**local, "DRN_DB": db, "DRN_FEATURES": features})
    assert not [out for out in outputs if out.output_type == "error"]
    text = "\n".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"{db}: runs ['nb-run']" in text and "3 videos" in text
    assert len([out for out in outputs if "image/png" in out.get("data", {})]) >= 4  # frames read from s3 too
