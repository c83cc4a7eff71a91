"""What a Ray Data or Ray Train job needs from the cluster, and the watch that ends it instead of a silent hang.

Plain logic on node resource tables (what ``ray.nodes()`` reports for the alive nodes) and plain iterators; the
same code on a real multi-node cluster, with nodes killed, is in test_cluster.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.capacity import ClusterCapacityError, PipelineNeeds, require, watch

EXTRACTION = PipelineNeeds("extraction", "C3D actor", 1, 1.0, side_cpus=1.0, side="decoding tasks")


def test_shortfall_names_the_missing_resource() -> None:
    head, one, two = {"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 2.0}
    assert EXTRACTION.shortfall([head, one, one]) is None
    assert EXTRACTION.shortfall([head, one]) == (
        "CPU: 1 CPU left, the extraction needs 2 (1 C3D actor(s) x 1 CPU, plus 1 CPU for decoding tasks); "
        "the cluster has 2 alive node(s) with 1 CPU")
    big = PipelineNeeds("extraction", "C3D actor", 1, 2.0, side_cpus=1.0, side="decoding tasks")
    assert big.shortfall([head, two, one]) is None
    assert big.shortfall([head, one, one]).startswith(
        "CPU: only 0 of 1 C3D actor(s) fit (2 CPU on one node); the cluster has 3 alive node(s) with 2 CPU")
    gpus = PipelineNeeds("grounding", "grounding actor", 2, 1.0, gpus_per_actor=1.0)
    assert gpus.shortfall([{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]) is None
    assert gpus.shortfall([{"CPU": 8, "GPU": 1}]).startswith("GPU: 1 GPU left, the grounding needs 2")


def test_watch_passes_everything_through_when_the_cluster_is_large_enough() -> None:
    nodes = [{"CPU": 2.0}]
    assert list(watch(iter(range(5)), EXTRACTION, wait_s=0.2, poll_s=0.02, nodes=lambda: nodes)) == list(range(5))

    def broken():
        yield 1
        raise ValueError("a bad row")

    with pytest.raises(ValueError, match="a bad row"):
        list(watch(broken(), EXTRACTION, wait_s=0.2, poll_s=0.02, nodes=lambda: nodes))


def test_a_stalled_job_on_a_cluster_too_small_stops_within_the_wait_naming_the_resource() -> None:
    release = threading.Event()
    nodes = [{"CPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}]

    def rows():
        yield from range(3)
        nodes.pop()  # a node dies; nothing comes any more
        release.wait(30)

    got, started = [], time.monotonic()
    with pytest.raises(ClusterCapacityError) as stopped:
        for row in watch(rows(), EXTRACTION, wait_s=0.5, poll_s=0.05, nodes=lambda: list(nodes)):
            got.append(row)
    release.set()
    assert got == [0, 1, 2] and time.monotonic() - started < 10
    assert str(stopped.value).startswith("the extraction cannot go on: missing CPU: 1 CPU left, the extraction "
                                         "needs 2")
    assert "rerun the same command" in str(stopped.value)


def test_a_stall_on_a_large_enough_cluster_is_reported_not_ended() -> None:
    notes: list[str] = []

    def rows():
        yield 1
        time.sleep(0.6)  # Ray re-running lost work
        yield 2

    got = list(watch(rows(), EXTRACTION, wait_s=0.1, notice_s=0.2, poll_s=0.05, nodes=lambda: [{"CPU": 4.0}],
                     say=notes.append))
    assert got == [1, 2] and notes and notes[0].startswith("note: no output from the extraction for")


def test_require_waits_for_capacity_then_gives_up() -> None:
    answers = iter([[{"CPU": 1.0}], [{"CPU": 1.0}], [{"CPU": 1.0}, {"CPU": 1.0}]])  # a node joins
    require(EXTRACTION, wait_s=30, nodes=lambda: next(answers))
    with pytest.raises(ClusterCapacityError, match="missing CPU: 1 CPU left"):
        require(EXTRACTION, wait_s=0.0, nodes=lambda: [{"CPU": 1.0}])
