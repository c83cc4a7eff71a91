"""Random fault injection (issue 21): each library job is killed with SIGKILL at random instants, rerun to
completion and compared with a clean run of the same inputs (benchmarks/fault_harness.py says how).

Two kills per job, in a row before one rerun to completion, on tiny inputs. The seed is random unless
``DRN_FAULT_SEED`` is set, and a failure names it: ``DRN_FAULT_SEED=S pytest tests/test_faults.py -k JOB`` replays
the same kill delays (the machine's timing decides where they land). Longer runs: ``benchmarks/faults.py``.
A kill the random ones found rarely, at one exact point, is also tested on its own (the last test).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # appended: never shadows a module
from fault_harness import JOBS, SIZES, LibraryInputs, compare_frames, run_job  # noqa: E402

from moments.index import ROW_KEY, Index  # noqa: E402
from moments.index.run_videos import RunVideos  # noqa: E402
from moments.library import Resources  # noqa: E402
from moments.library.grounding import GroundingJob  # noqa: E402

KILLS = 2  # per job, in a row, then one rerun (benchmarks/faults.py runs 20); kept small for CI time
SEED = int(os.environ.get("DRN_FAULT_SEED") or secrets.randbelow(2**31))
RAY = os.environ.get("DRN_FAULT_RAY", "local")  # or "cluster": the runs join one Ray head, a kill takes the driver


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The jobs' inputs, written once: a few synthetic videos, a feature-level library, a small checkpoint."""
    return tmp_path_factory.mktemp("fault-inputs")


@pytest.mark.slow
@pytest.mark.parametrize("job", list(JOBS))
def test_a_job_killed_at_random_instants_reruns_to_the_clean_result(job: str, inputs: Path, tmp_path: Path) -> None:
    print(f"fault injection of {job}: DRN_FAULT_SEED={SEED}")
    report = run_job(job, tmp_path, kills=KILLS, seed=SEED, chain=KILLS, inputs=inputs, ray=RAY)
    replay = (f"replay: DRN_FAULT_SEED={SEED} pytest tests/test_faults.py -k {job}, or python benchmarks/faults.py "
              f"--job {job} --size ci --kills {KILLS} --chain {KILLS} --seed {SEED} --ray {RAY}")
    assert not report.differences, "\n".join([replay, *report.differences])
    assert report.kills >= KILLS, f"only {report.kills} of {KILLS} kills landed ({report.missed} missed); {replay}"


class Killed(BaseException):
    """The job dies here (no ``except Exception`` of the job catches it)."""


@pytest.mark.slow
def test_a_ground_killed_between_its_segments_and_run_videos_commits_keeps_each_querys_best(
        inputs: Path, tmp_path: Path, ray_session, monkeypatch) -> None:
    """The rows of a video written just before the kill, but not recorded as finished, are written again by the
    rerun; offered twice to the best-M bound they used to push out rows of later videos that belong there."""
    library = LibraryInputs(SIZES["ci"])
    library.prepare(inputs)

    def job(db: Path) -> GroundingJob:
        return GroundingJob(str(library.checkpoint), str(library.features), str(library.queries), db=str(db),
                            mode="exhaustive", keep_per_query=5, top_k=3, write_batch_rows=60,
                            resources=Resources(num_actors=1, videos_per_batch=4))

    job(tmp_path / "clean").run()
    record = RunVideos.add
    calls = []

    def dies_on_the_second_record(self, run_id, video_ids):
        calls.append(run_id)
        if len(calls) == 2:
            raise Killed("killed between the segments merge and the run_videos merge")
        return record(self, run_id, video_ids)

    monkeypatch.setattr(RunVideos, "add", dies_on_the_second_record)
    with pytest.raises(Killed):
        job(tmp_path / "killed").run()
    monkeypatch.setattr(RunVideos, "add", record)
    rerun = job(tmp_path / "killed").run()
    assert 0 < rerun.videos_skipped < rerun.videos_total
    clean, got = Index(str(tmp_path / "clean")).to_pandas(), Index(str(tmp_path / "killed")).to_pandas()
    assert compare_frames("segments", clean, got, ROW_KEY) == []
