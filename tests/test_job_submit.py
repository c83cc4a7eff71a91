"""`ray job submit` against a real local head with Ray's token authentication: extract, train and ground run as
Ray jobs with --working-dir.

The test starts its own head (`ray start --head`, `RAY_AUTH_MODE=token` and a new `RAY_AUTH_TOKEN`) in a dedicated
temporary folder on free ports, submits the three jobs through the job server with the repository as working_dir
(the client presents the same token; each job's driver inherits the head's token from its environment), checks
what each wrote, checks that the `ray job` CLI is refused without the token or with a wrong one and answered with
it, and stops that head only: the processes whose command line names the folder, and their children, by id
(`ray stop` would stop every Ray on the machine, the pytest session's included).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from drn.store import FeatureStore
from moments.index import Index
from pipeline.synthetic import make_library

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", "runs", "demo_output", "outputs", "notebooks/.ipynb_checkpoints", "**/__pycache__",
            "*.egg-info", ".ruff_cache", ".pytest_cache", "build", "dist"]
JOB_TIMEOUT_S = 240


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def head_processes(temp_dir: str) -> list[psutil.Process]:
    """The head's processes (their command line names ``temp_dir``) and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def stop_head(temp_dir: str) -> None:
    processes = head_processes(temp_dir)
    for proc in processes:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard's (job server's) URL
    token: str  # Ray's authentication token of this head
    env: dict[str, str]  # an environment that holds the token, as a client's or a node's must

    def client_env(self, token: str | None) -> dict[str, str]:
        """The environment of a `ray` CLI client: token mode with `token`, or (None) no token at all."""
        env = {key: value for key, value in self.env.items() if not key.startswith("RAY_AUTH_")}
        return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {
            **env, "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def ray_head():
    """A local Ray head with the job server and token authentication; stopped (only it) afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths must stay short
    gcs, dashboard, agent, client = free_ports(4)
    token = secrets.token_hex(32)  # Ray's own format: 256 bits as hex
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"})
    command = [str(VENV_BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(gcs),
               "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(agent),
               "--ray-client-server-port", str(client), "--include-dashboard", "true", "--temp-dir", temp_dir,
               "--disable-usage-stats"]
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stderr[-2000:]
        yield Head(f"http://127.0.0.1:{dashboard}", token, env)
    finally:
        stop_head(temp_dir)
        leaked = head_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leaked, f"processes of the test's Ray head are still running: {[p.pid for p in leaked]}"


def submit(client, entrypoint: list[str]) -> str:
    """Submit once the head's job agent is up (it starts a few seconds after the head)."""
    runtime_env = {"working_dir": str(REPO), "excludes": EXCLUDES}  # the driver inherits the head's token
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.submit_job(entrypoint=" ".join(entrypoint), runtime_env=runtime_env)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def wait_for(client, job_id: str) -> str:
    """The job's logs once it succeeded; fails with the logs when it failed or ran past the timeout."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {JOB_TIMEOUT_S} s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} {status}:\n{logs[-3000:]}"
    return logs


@pytest.mark.slow
def test_extract_train_and_ground_run_as_ray_jobs(tmp_path, ray_head):
    from ray.job_submission import JobSubmissionClient

    library = make_library(tmp_path / "library", num_videos=3, seed=2, min_duration_s=3.0, max_duration_s=4.0,
                           width=64, height=48)
    videos, annotations = library["video_dir"], library["annotations_dir"]
    features, model, db = tmp_path / "features", tmp_path / "model", tmp_path / "lancedb"
    queries = tmp_path / "queries.txt"
    texts = [json.loads(line)["query"] for line in (Path(annotations) / "test.jsonl").read_text().splitlines()]
    queries.write_text("".join(t + "\n" for t in dict.fromkeys(texts)))
    python = sys.executable
    # the token as a header, which is what the SDK sends from RAY_AUTH_TOKEN; this process's own Ray state (the
    # session's local Ray) is left alone
    client = JobSubmissionClient(ray_head.address, headers={"Authorization": f"Bearer {ray_head.token}"})

    extract = submit(client, [python, "-m", "jobs.extract", "--videos", videos, "--out", str(features),
                              "--weights", "random", "--fps", "4", "--clip-stride", "16", "--no-progress"])
    logs = wait_for(client, extract)
    assert "RANDOM weights" in logs and "done: 3" in logs
    store = FeatureStore(features)
    assert sorted(store.ok_video_ids()) == sorted(p.stem for p in Path(videos).glob("*.mp4"))

    # three videos leave one for training: no video can be a negative there
    epochs = [f"train.stage{k}.epochs=1" for k in (1, 2, 3)] + ["train.negatives.per_positive=0"]
    train = submit(client, [python, "-m", "jobs.train", "--config", str(REPO / "configs" / "demo.yaml"),
                            "--features", str(features), "--annotations", annotations, "--out", str(model),
                            "--quiet", "--threads", "1", *sum((["--set", e] for e in epochs), [])])
    last_line = wait_for(client, train).strip().splitlines()[-1]
    summary = json.loads(last_line)
    assert Path(summary["best_checkpoint"]).is_file() and summary["stage"] in (1, 2, 3)

    ground = submit(client, [python, "-m", "jobs.ground", "--checkpoint", summary["best_checkpoint"],
                             "--features", str(features), "--queries", str(queries), "--db", str(db),
                             "--run-id", "submitted", "--no-progress"])
    wait_for(client, ground)
    index = Index(db)
    assert index.runs() == ["submitted"]
    rows = index.to_pandas(run_id="submitted")
    assert len(rows) > 0 and set(rows.video_id) == set(store.ok_video_ids())
    assert set(rows.query_text) == set(texts)

    listed = ray_jobs(ray_head, ray_head.token)
    assert listed.returncode == 0 and all(job in listed.stdout for job in (extract, train, ground)), listed.stderr
    for token, words in ((None, "Authentication required"), (secrets.token_hex(32), "Invalid authentication token")):
        refused = ray_jobs(ray_head, token)
        assert refused.returncode != 0 and words in refused.stdout + refused.stderr, refused.stderr[-2000:]


def ray_jobs(head: Head, token: str | None) -> subprocess.CompletedProcess:
    """`ray job list` against the head, as a client holding `token` in RAY_AUTH_TOKEN (None: no token)."""
    return subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", head.address],
                          env=head.client_env(token), capture_output=True, text=True, timeout=120)
