"""The cluster path on one machine: a multi-node Ray cluster, object storage over the S3 API, nodes that die.

A head with no CPUs and worker nodes with their own CPUs (``ray.cluster_utils.Cluster``, run by the harness in
tests/ray_cluster.py, outside this process), and the moto S3 server of the session. Every job reads and writes
``s3://`` and joins the cluster as it would a real one (``RAY_ADDRESS``, or ``ray job submit``); the nodes reach the
bucket through the AWS variables in their environment. In each test a worker node is killed while the job runs:

* extraction from ``s3://`` to ``s3://``, submitted with ``ray job submit``, loses the node of its C3D actor and
  finishes with every video exactly once;
* extraction on a cluster left too small (its 2-CPU actor fits nowhere) stops within a bounded time, naming the
  missing resource, exit status 1; the rerun on a repaired cluster resumes and completes;
* training on 2 Ray Train workers with ``--storage s3://...`` loses its workers' node mid-epoch and resumes from the
  last checkpoint on ``s3://``;
* grounding into LanceDB on ``s3://`` loses the node of a grounding actor and writes every (query, video) exactly
  once; a search reads the index from ``s3://``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from ray_cluster import LocalCluster

from drn.checkpoint import read_checkpoint
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.store import FeatureStore
from drn.store.object_store import filesystem_for
from jobs.search import main as search_main
from moments.index import Index
from pipeline.synthetic import make_library

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
JOB_TIMEOUT_S = 300
EXCLUDES = [".venv", ".git", "runs", "demo_output", "outputs", "**/__pycache__", "*.egg-info", ".ruff_cache",
            ".pytest_cache", "notebooks", "benchmarks", "docs"]
EXTRACT = ["--weights", "random", "--fps", "4", "--clip-stride", "16", "--videos-per-shard", "1", "--no-progress"]
SMALL = ["model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
         "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
         "train.batch_size=16", "train.stage1.epochs=8", "train.stage2.epochs=1"]


@pytest.fixture(scope="module")
def s3(s3_server):
    """The AWS variables of the test server, for this module (the pytest process reads what the jobs wrote)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("AWS_", "DRN_S3_"))]:
            patch.delenv(name)
        for name, value in s3_server.env.items():
            patch.setenv(name, value)
        patch.setenv("RAY_AUTH_MODE", "disabled")  # the job client talks to the test head without a token
        yield s3_server


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A head with no CPUs (it runs drivers and schedules, no work); each test adds the worker nodes it needs."""
    local = LocalCluster(s3.env, head_cpus=0, log_dir=tmp_path_factory.mktemp("cluster-logs"))
    try:
        yield local
    finally:
        local.shutdown()


def use_nodes(cluster: LocalCluster, wanted: dict[str, float]) -> None:
    """Make the worker nodes exactly ``wanted`` (name -> CPUs): remove the others, add the missing ones."""
    for name in cluster.nodes():
        if name != "head" and name not in wanted:
            cluster.remove_node(name)
    present = cluster.nodes()
    for name, cpus in wanted.items():
        if name not in present:
            cluster.add_node(name, cpus)


def kill_when(cluster: LocalCluster, ready: Callable[[], bool], actor: str, running: Callable[[], bool],
              logs: Callable[[], str]) -> str:
    """Once ``ready()``, kill a node hosting an actor whose class name contains ``actor``; returns its name."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        assert running(), f"the job ended before a node could be killed under it:\n{logs()[-12000:]}"
        if ready():
            hosts = [name for name in cluster.nodes_hosting(actor) if name != "head"]
            if hosts:
                cluster.remove_node(hosts[0])
                return hosts[0]
        time.sleep(0.3)
    pytest.fail(f"no node hosting {actor} became ready to kill in {JOB_TIMEOUT_S} s")


def start_job(cluster: LocalCluster, args: list[str], log: Path) -> subprocess.Popen:
    """A job as a user runs it against a cluster: ``python -m jobs.X`` with ``RAY_ADDRESS``."""
    return subprocess.Popen([PYTHON, "-m", *args], cwd=REPO, env={**cluster.env, "OMP_NUM_THREADS": "1"},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)  # noqa: SIM115


def finish(job: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        code = job.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the job still ran after {JOB_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


def sealed_videos(s3, bucket: str, prefix: str) -> int:
    return len([k for k in s3.keys(bucket, f"{prefix}/videos/") if k.endswith(".parquet")])


def assert_every_video_once(uri: str, ids: list[str]) -> None:
    """Each video has one ``ok`` row in a sealed shard and its clips once each, in chunks 0..n-1."""
    fs, root = filesystem_for(uri)
    sealed = {info.path.rsplit("/", 1)[1] for info in fs.get_file_info(pafs.FileSelector(f"{root}/videos"))
              if info.path.endswith(".parquet")}
    videos = pa.concat_tables([pq.read_table(f"{root}/videos/{name}", filesystem=fs) for name in sorted(sealed)])
    assert sorted(videos["video_id"].to_pylist()) == ids  # no video twice, none missing
    assert set(videos["status"].to_pylist()) == {"ok"}
    chunks = pa.concat_tables([pq.read_table(f"{root}/clips/{name}", filesystem=fs, columns=["video_id", "chunk"])
                               for name in sorted(sealed)])
    pairs = list(zip(chunks["video_id"].to_pylist(), chunks["chunk"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)) and {v for v, _ in pairs} == set(ids)
    store = FeatureStore(uri)
    clips = dict(zip(videos["video_id"].to_pylist(), videos["num_clips"].to_pylist(), strict=True))
    assert all(store.load(v).num_clips == clips[v] >= 1 for v in ids)


@pytest.fixture(scope="module")
def library(s3, tmp_path_factory) -> dict:
    """16 tiny videos in a bucket (one C3D clip each at --fps 4 --clip-stride 16)."""
    root = tmp_path_factory.mktemp("cluster-library")
    made = make_library(root / "lib", num_videos=16, seed=2, min_duration_s=3.0, max_duration_s=4.0, width=64,
                        height=48)
    bucket = s3.new_bucket("library")
    return {"bucket": bucket, "videos": s3.upload_folder(made["video_dir"], bucket, "videos"),
            "ids": sorted(p.stem for p in Path(made["video_dir"]).glob("*.mp4"))}


# ---- extraction ------------------------------------------------------------------------------------------------

def test_submitted_extraction_from_s3_to_s3_survives_the_loss_of_the_c3d_node(cluster, s3, library) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    use_nodes(cluster, {"w1": 2, "w2": 2})
    bucket, out = library["bucket"], f"s3://{library['bucket']}/features"
    client = JobSubmissionClient(cluster.dashboard)
    entrypoint = " ".join([PYTHON, "-m", "jobs.extract", "--videos", library["videos"], "--out", out, *EXTRACT])
    deadline = time.monotonic() + 90
    while True:  # the head's job agent comes up a few seconds after the head
        try:
            job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO),
                                                                       "excludes": EXCLUDES})
            break
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    killed = kill_when(cluster, lambda: 1 <= sealed_videos(s3, bucket, "features") < len(library["ids"]),
                       "C3DActor", lambda: client.get_job_status(job) not in finished,
                       lambda: client.get_job_logs(job))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while client.get_job_status(job) not in finished and time.monotonic() < deadline:
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert killed in ("w1", "w2") and f"done: {len(library['ids'])}  failed: 0" in logs
    assert_every_video_once(out, library["ids"])


def test_a_cluster_left_too_small_stops_the_extraction_naming_the_resource_and_the_rerun_resumes(
        cluster, s3, library, tmp_path) -> None:
    use_nodes(cluster, {"c1": 2, "c2": 1})  # the 2-CPU C3D actor fits on c1 only
    bucket, out = library["bucket"], f"s3://{library['bucket']}/features-small"
    args = ["jobs.extract", "--videos", library["videos"], "--out", out, *EXTRACT, "--cpus-per-actor", "2",
            "--capacity-wait-s", "10"]
    job = start_job(cluster, args, tmp_path / "first.log")
    killed = kill_when(cluster, lambda: sealed_videos(s3, bucket, "features-small") >= 1, "C3DActor",
                       lambda: job.poll() is None, (tmp_path / "first.log").read_text)
    lost_at = time.monotonic()
    code, log = finish(job, tmp_path / "first.log")
    assert killed == "c1" and code == 1, log[-3000:]
    assert time.monotonic() - lost_at < 120  # bounded: the wait, a few polls, the shutdown
    error = [line for line in log.splitlines() if line.startswith("error: ")]
    assert error == [error[-1]] and error[-1].startswith(
        "error: the extraction cannot go on: missing CPU: only 0 of 1 C3D actor(s) fit (2 CPU on one node); "
        "the cluster has 2 alive node(s) with 1 CPU")
    assert "rerun the same command" in error[-1]
    done = sealed_videos(s3, bucket, "features-small")
    assert 1 <= done < len(library["ids"])

    use_nodes(cluster, {"c2": 1, "c3": 2})  # the cluster is repaired: the same command resumes
    code, log = finish(start_job(cluster, args, tmp_path / "rerun.log"), tmp_path / "rerun.log")
    assert code == 0, log[-3000:]
    assert f"{len(library['ids'])} videos listed: {len(library['ids']) - done} to extract, {done} already in" in log
    assert_every_video_once(out, library["ids"])


# ---- training, grounding, search -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(cluster, s3, tmp_path_factory) -> dict:
    """Stages 1 and 2 on 2 Ray Train workers, runs on s3://; the workers' node is killed once stage 1 has a
    checkpoint, in a later epoch."""
    root = tmp_path_factory.mktemp("cluster-train")
    bench = make_synthetic_benchmark(root / "syn", num_videos=200, feature_dim=16, seed=3)
    bucket = s3.new_bucket("train")
    features = s3.upload_folder(bench.features, bucket, "features")
    use_nodes(cluster, {"t1": 2, "t2": 2})
    snapshot = "runs/syn-stage1/checkpoint_manager_snapshot.json"
    args = ["jobs.train", "--config", str(REPO / "configs" / "synthetic.yaml"), "--features", features,
            "--annotations", bench.annotations, "--num-workers", "2", "--storage", f"s3://{bucket}/runs",
            "--name", "syn", "--stages", "1,2", "--quiet", "--threads", "1", *sum((["--set", s] for s in SMALL), [])]
    job = start_job(cluster, args, root / "train.log")
    seen: list[int] = []

    def checkpointed() -> bool:
        if snapshot not in s3.keys(bucket, "runs/syn-stage1/"):
            return False
        text = s3.client().get_object(Bucket=bucket, Key=snapshot)["Body"].read().decode()
        seen.extend(int(e) for e in re.findall(r"epoch(\d{3})", text))
        return bool(seen)

    killed = kill_when(cluster, checkpointed, "RayTrainWorker", lambda: job.poll() is None,
                       (root / "train.log").read_text)
    code, log = finish(job, root / "train.log")
    assert code == 0, log[-3000:]
    summary = json.loads(log.strip().splitlines()[-1])
    stored = json.loads(s3.client().get_object(Bucket=bucket, Key="runs/syn/summary.json")["Body"].read())
    return {"bucket": bucket, "features": features, "annotations": bench.annotations, "summary": summary,
            "stored": stored, "killed": killed, "latest_at_kill": max(seen)}


def test_training_on_two_workers_resumes_from_its_last_s3_checkpoint_after_losing_a_node(trained, s3) -> None:
    stage1, stage2 = trained["stored"]["stages"]
    assert trained["killed"] in ("t1", "t2")
    # the replaced worker group started after the last checkpoint registered before the kill, not from epoch 1
    assert stage1["resumed"] is True and stage1["first_epoch"] >= trained["latest_at_kill"] + 1 >= 2
    assert stage1["epochs_run"] == list(range(stage1["first_epoch"], 9)) and stage1["world_size"] == 2
    assert (stage2["resumed"], stage2["epochs_run"], stage2["world_size"]) == (False, [1], 2)
    best = trained["summary"]["best_checkpoint"]
    assert best == f"s3://{trained['bucket']}/runs/syn/best.pt" and read_checkpoint(best)["stage"] in (1, 2)
    keys = s3.keys(trained["bucket"], "runs/")
    assert {"runs/syn-stage1/DONE.json", "runs/syn-stage2/DONE.json", "runs/syn/summary.json"} <= set(keys)


def test_grounding_into_lancedb_on_s3_survives_the_loss_of_an_actor_node_and_search_reads_it(
        trained, cluster, s3, tmp_path, capsys) -> None:
    bucket = trained["bucket"]
    lines = (Path(trained["annotations"]) / "test.jsonl").read_text().splitlines()
    texts = list(dict.fromkeys(json.loads(line)["query"] for line in lines))
    s3.client().put_object(Bucket=bucket, Key="queries.txt", Body="".join(t + "\n" for t in texts).encode())
    db = f"s3://{bucket}/lancedb"
    use_nodes(cluster, {"g1": 2, "g2": 2})
    args = ["jobs.ground", "--checkpoint", trained["summary"]["best_checkpoint"], "--features", trained["features"],
            "--queries", f"s3://{bucket}/queries.txt", "--db", db, "--run-id", "cluster", "--num-actors", "2",
            "--videos-per-batch", "2", "--top-k", "3", "--keep-per-query", "all", "--no-progress"]
    job = start_job(cluster, args, tmp_path / "ground.log")
    killed = kill_when(cluster, lambda: True, "GroundingActor", lambda: job.poll() is None,
                       (tmp_path / "ground.log").read_text)
    code, log = finish(job, tmp_path / "ground.log")
    assert code == 0, log[-3000:]
    videos = FeatureStore(trained["features"]).ok_video_ids()
    assert killed in ("g1", "g2") and f"{len(videos)} grounded, 0 failed" in log

    rows = Index(db).to_pandas(run_id="cluster")
    per_pair = rows.groupby(["query_id", "video_id"])["rank"].apply(sorted)
    assert len(per_pair) == len(texts) * len(videos)  # every (query, video), none lost
    assert all(ranks == list(range(len(ranks))) for ranks in per_pair)  # each rank once: no duplicates
    assert set(rows.video_id) == set(videos)
    assert all(sorted(ranks) == list(range(len(ranks))) for _, ranks in rows.groupby("query_id")["library_rank"])

    assert search_main([texts[0], "--db", db, "--run-id", "cluster", "--k", "5", "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(found) == 5 and found[0]["query_text"] == texts[0] and found[0]["library_rank"] == 0
