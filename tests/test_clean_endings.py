"""A job that stops on an error ends with its one-line message: nothing prints after it.

On a real multi-node local cluster (tests/ray_cluster.py: a head with no CPUs, two 1-CPU workers), ``jobs.extract``
runs as a user runs it (``python -m jobs.extract`` with ``RAY_ADDRESS``) and a worker node is killed under it: the
cluster is left too small (1 CPU; the extraction needs one for its C3D actor and one for decoding), and the job
stops with exit status 1. Its combined output must end with the ``error: ...`` line: no traceback of Ray Data's
threads after it, and no new "Connected to Ray cluster" (nothing reconnects once the job has shut Ray down).

More trials than the test runs: ``.venv/bin/python tests/test_clean_endings.py --trials 10``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster import LocalCluster  # noqa: E402  (tests/ is not a package)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ERROR = "error: the extraction cannot go on: missing CPU: 1 CPU left, the extraction needs 2"
JOB_TIMEOUT_S = 300


@dataclass
class Ending:
    """How one stopped job ended."""

    code: int
    log: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.strip()]

    def problems(self) -> list[str]:
        """What is wrong with the ending; empty when the error line is the last thing printed."""
        found = []
        if self.code != 1:
            found.append(f"exit status {self.code}, not 1")
        errors = [i for i, line in enumerate(self.lines) if line.startswith(ERROR)]
        if not errors:
            return [*found, "no capacity error line"]
        after = self.lines[errors[-1] + 1:]
        if after:
            found.append(f"{len(after)} line(s) after the error, the first: {after[0][:200]!r}")
        if "Traceback" in self.log:
            found.append("a traceback in the output")
        return found


def make_videos(folder: Path, count: int = 160) -> Path:
    """``count`` tiny synthetic videos (one C3D clip each at --fps 4 --clip-stride 16): enough that decoding is
    still under way when the node dies, so the cluster left cannot go on."""
    from pipeline.synthetic import make_library

    made = make_library(folder, num_videos=count, seed=5, min_duration_s=3.0, max_duration_s=4.0, width=64,
                        height=48)
    return Path(made["video_dir"])


def sealed(store: Path) -> int:
    return len(list((store / "videos").glob("*.parquet"))) if (store / "videos").is_dir() else 0


def stop_by_node_loss(cluster: LocalCluster, videos: Path, store: Path, log: Path) -> Ending:
    """Run ``jobs.extract`` on workers w1 and w2 (1 CPU each), kill the C3D actor's node once a video is sealed,
    and return how the job ended."""
    for name in ("w1", "w2"):
        if name not in cluster.nodes():
            cluster.add_node(name, 1)
    args = [sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(store), "--weights",
            "random", "--fps", "4", "--clip-stride", "16", "--videos-per-shard", "1", "--no-progress",
            "--capacity-wait-s", "5"]
    with open(log, "w") as out:
        job = subprocess.Popen(args, cwd=REPO, env={**cluster.env, "OMP_NUM_THREADS": "1"}, stdout=out,
                               stderr=subprocess.STDOUT, text=True)
    try:
        kill_c3d_node(cluster, job, store, log)
        code = job.wait(timeout=JOB_TIMEOUT_S)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return Ending(code, log.read_text())


def kill_c3d_node(cluster: LocalCluster, job: subprocess.Popen, store: Path, log: Path) -> str:
    """Once the job has sealed a video, kill the worker that hosts its C3D actor; returns that node's name."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise AssertionError(f"the job ended before a node could be killed:\n{log.read_text()[-4000:]}")
        if sealed(store) >= 1:
            hosts = [name for name in cluster.nodes_hosting("C3DActor") if name != "head"]
            if hosts:
                cluster.remove_node(hosts[0])
                return hosts[0]
        time.sleep(0.3)
    raise AssertionError(f"no C3D actor node to kill within {JOB_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head with no CPUs; the test adds its 1-CPU workers."""
    local = LocalCluster({}, head_cpus=0, log_dir=tmp_path_factory.mktemp("cluster-logs"))
    try:
        yield local
    finally:
        local.shutdown()


def test_a_job_stopped_by_a_lost_node_prints_its_error_line_last(cluster, tmp_path) -> None:
    videos = make_videos(tmp_path / "lib")
    ending = stop_by_node_loss(cluster, videos, tmp_path / "store", tmp_path / "job.log")
    assert ending.problems() == [], ending.log[-6000:]
    assert "rerun the same command" in ending.lines[-1]
    assert "Connected to Ray" not in ending.log.split(ERROR)[-1]


def test_a_watch_stopped_for_capacity_stops_the_ray_data_executor_feeding_it(ray_session) -> None:
    """The same stop on the session's local Ray, with the cluster's answers given: the dataset (a map that would
    run a minute) is shut down, and its executor's thread and the watch's reader have ended when the error comes."""
    from pipeline.capacity import ClusterCapacityError, PipelineNeeds, watch
    from pipeline.ray_runtime import running_executors, start_ray

    start_ray()  # the session's Ray stays; Ray Data's executors are recorded from now on
    needs = PipelineNeeds("extraction", "C3D actor", 1, 1.0, side_cpus=1.0, side="decoding tasks")
    answers = iter([[{"CPU": 2.0}]])  # large enough at the start, then a node is gone
    dataset = ray_session.data.range(4, override_num_blocks=4).map(_slow_row)
    before, started = running_executors(), time.monotonic()
    with pytest.raises(ClusterCapacityError, match="missing CPU: 1 CPU left"):
        for _ in watch(dataset.iter_rows(), needs, wait_s=1.0, poll_s=0.1, nodes=lambda: next(answers, [{"CPU": 1.0}])):
            pass
    stopped = running_executors() - before
    assert stopped and not any(executor.is_alive() for executor in stopped)
    assert not [t for t in threading.enumerate() if t.name == "extraction-output"]
    assert time.monotonic() - started < 45


def _slow_row(row: dict) -> dict:
    time.sleep(60)
    return row


def test_the_error_line_comes_after_what_stdout_still_buffers(tmp_path) -> None:
    """stdout to a file is block-buffered: job_main flushes it before the error line, which stays last."""
    script = ("import sys\n"
              "from drn.errors import InputError\n"
              "from jobs.cli import job_main\n"
              "@job_main\n"
              "def main(argv=None):\n"
              "    print('a line of the job')\n"
              "    raise InputError('bad input')\n"
              "sys.exit(main())\n")
    with open(tmp_path / "out.log", "w") as out:
        code = subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              timeout=120).returncode
    assert code == 2
    assert (tmp_path / "out.log").read_text().splitlines() == ["a line of the job", "error: bad input"]


def trials(count: int) -> int:
    """Run ``count`` node-loss stops on one cluster; print each ending and the tally; the number of bad ones."""
    work = Path(tempfile.mkdtemp(prefix="clean-endings-"))
    videos = make_videos(work / "lib")
    cluster = LocalCluster({}, head_cpus=0, log_dir=work)
    bad = 0
    try:
        for trial in range(count):
            started = time.monotonic()
            ending = stop_by_node_loss(cluster, videos, work / f"store{trial}", work / f"job{trial}.log")
            problems = ending.problems()
            bad += bool(problems)
            print(f"trial {trial + 1}: {'clean' if not problems else '; '.join(problems)} "
                  f"({time.monotonic() - started:.0f} s, log {work / f'job{trial}.log'})", flush=True)
    finally:
        cluster.shutdown()
    print(f"{count - bad} of {count} clean")
    return bad


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Repeat the node-loss stop and count clean endings.")
    parser.add_argument("--trials", type=int, default=5)
    sys.exit(1 if trials(parser.parse_args().trials) else 0)
