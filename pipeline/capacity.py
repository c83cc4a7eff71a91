"""What a Ray Data job needs from the cluster, and a watch that never lets it hang silently when nodes go away.

Ray re-runs the tasks and restarts the actors that a lost node took with it, without limit (Ray Data's defaults),
and waits for resources as long as it takes. When the nodes left cannot hold what the job needs, that is
forever: in extraction, a C3D actor restarted on the last free CPU leaves none for the decoding tasks it waits on.

So each job states its needs (:class:`PipelineNeeds`: the actor pool, and the CPUs its feeding tasks need beside
it), and :func:`watch` consumes the job's output while checking the alive nodes:

* before the first row and whenever rows stop coming, it compares the needs with the alive nodes' resources
  (each actor must fit on one node; the side CPUs anywhere else);
* when they fall short for ``wait_s`` seconds (time for an autoscaler to replace a node), it raises
  :class:`ClusterCapacityError` naming the missing resource; the job ends non-zero and, rerun once the cluster
  has room, resumes (extraction skips the videos in the store, grounding the videos with rows);
* when rows stop coming although the cluster is large enough, it says so every ``notice_s`` seconds;
* when it stops early (that error, or the job's own), it shuts down the Ray Data executors feeding it and waits
  for its reader thread: nothing of the dataset runs on, and ``jobs.cli.job_main`` can shut Ray down and print
  the error as the job's last line.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pipeline.ray_runtime import running_executors, stop_executors

DEFAULT_WAIT_S = 120.0
DEFAULT_NOTICE_S = 60.0
POLL_S = 1.0
STOP_TIMEOUT_S = 30.0  # the longest a stopped watch waits for its reader thread
T = TypeVar("T")


class ClusterCapacityError(RuntimeError):
    """The cluster that is left cannot run the job; what is done is kept, and a rerun resumes."""


@dataclass(frozen=True)
class PipelineNeeds:
    """What a job must hold at once: ``actors`` actors of ``cpus_per_actor``/``gpus_per_actor`` each (each on one
    node), and ``side_cpus`` CPUs beside them for the tasks that feed them."""

    job: str  # "extraction", "grounding"
    actor: str  # what an actor is, e.g. "C3D actor"
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float = 0.0
    side_cpus: float = 0.0
    side: str = ""  # what the side CPUs are for, e.g. "decoding tasks"

    def describe(self) -> str:
        parts = [f"{self.actors} {self.actor}(s) x {self.cpus_per_actor:g} CPU"
                 + (f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "")]
        if self.side_cpus:
            parts.append(f"{self.side_cpus:g} CPU for {self.side}")
        return ", plus ".join(parts)

    def shortfall(self, nodes: Sequence[Mapping[str, float]]) -> str | None:
        """None when ``nodes`` (each alive node's total resources) can hold the needs; else what is missing."""
        free = [{"CPU": float(n.get("CPU", 0)), "GPU": float(n.get("GPU", 0))} for n in nodes]
        total_cpu = sum(n["CPU"] for n in free)
        total_gpu = sum(n["GPU"] for n in free)
        placed = 0
        for _ in range(self.actors):  # greedy: each actor on the node with most CPU that fits it
            fits = [n for n in free if n["CPU"] >= self.cpus_per_actor and n["GPU"] >= self.gpus_per_actor]
            if not fits:
                break
            best = max(fits, key=lambda n: (n["CPU"], n["GPU"]))
            best["CPU"] -= self.cpus_per_actor
            best["GPU"] -= self.gpus_per_actor
            placed += 1
        left_cpu = sum(n["CPU"] for n in free)
        need_cpu = self.actors * self.cpus_per_actor + self.side_cpus
        have = f"{len(nodes)} alive node(s) with {total_cpu:g} CPU" + (f", {total_gpu:g} GPU" if total_gpu else "")
        if placed < self.actors:
            if self.gpus_per_actor and total_gpu < self.actors * self.gpus_per_actor:
                resource = f"GPU: {total_gpu:g} GPU left, the {self.job} needs {self.actors * self.gpus_per_actor:g}"
            else:
                resource = (f"CPU: only {placed} of {self.actors} {self.actor}(s) fit ({self.cpus_per_actor:g} CPU"
                            + (f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "")
                            + " on one node)")
            return f"{resource}; the cluster has {have}; the {self.job} needs {self.describe()}"
        if left_cpu + 1e-9 < self.side_cpus:
            return (f"CPU: {total_cpu:g} CPU left, the {self.job} needs {need_cpu:g} ({self.describe()}); "
                    f"the cluster has {have}")
        return None


def alive_node_resources() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]


def watch(
    items: Iterable[T],
    needs: PipelineNeeds,
    *,
    wait_s: float = DEFAULT_WAIT_S,
    notice_s: float = DEFAULT_NOTICE_S,
    poll_s: float = POLL_S,
    nodes: Callable[[], Sequence[Mapping[str, float]]] = alive_node_resources,
    say: Callable[[str], None] = print,
) -> Iterator[T]:
    """Yield ``items`` (consumed in a background thread) while checking the cluster (module docstring).

    Raises :class:`ClusterCapacityError` when the alive nodes cannot hold ``needs`` for ``wait_s`` seconds in a
    row while no item comes; errors of ``items`` are raised here as they are. When it stops before ``items`` end
    (that error, or the caller stopping), the Ray Data executors started meanwhile (those that feed ``items``)
    are shut down and the background thread has ended before it returns: nothing of the job runs on.
    """
    check = _Check(needs, wait_s, nodes)
    check.now()  # refuse at once a cluster that cannot run the job now and does not grow within wait_s
    before = running_executors()
    reader = _Reader(items, poll_s, name=f"{needs.job}-output")
    reader.start()
    quiet_since = time.monotonic()
    last_notice = quiet_since
    reason: BaseException | None = None
    try:
        while True:
            try:
                item, error = reader.inbox.get(timeout=poll_s)
            except queue.Empty:
                check.poll()
                now = time.monotonic()
                if now - quiet_since >= notice_s and now - last_notice >= notice_s:
                    last_notice = now
                    say(f"note: no output from the {needs.job} for {now - quiet_since:.0f} s; the cluster can hold "
                        f"what it needs ({needs.describe()}), so Ray is still working (lost work is re-run)")
                continue
            if item is _DONE:
                if error is not None:
                    raise error
                return
            check.reset()
            quiet_since = last_notice = time.monotonic()
            yield item
    except BaseException as error:  # ours, the items', or the caller's stop (GeneratorExit)
        reason = error
        raise
    finally:
        reader.stop(running_executors() - before, reason)


_DONE = object()


class _Reader(threading.Thread):
    """Consumes ``items`` into ``inbox`` (entries ``(item, None)``, then ``(_DONE, error or None)``); once
    ``stopping`` is set it takes nothing more and closes ``items`` (a Ray Data iterator then stops its executor)."""

    def __init__(self, items: Iterable, poll_s: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.items, self.poll_s = items, poll_s
        self.inbox: queue.Queue = queue.Queue(maxsize=4)
        self.stopping = threading.Event()

    def run(self) -> None:
        iterator = None
        try:
            iterator = iter(self.items)
            for item in iterator:
                if not self._offer((item, None)):
                    return
            self._offer((_DONE, None))
        except BaseException as error:  # handed to the consumer
            self._offer((_DONE, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def stop(self, feeding: set, reason: BaseException | None) -> None:
        """Take nothing more. Stopped early (``reason``) while still reading Ray Data's output: stop the
        executors ``feeding`` it (its iteration then ends) and wait for this thread."""
        self.stopping.set()
        if reason is not None and self.is_alive() and feeding:
            stop_executors(feeding, reason)
            self.join(STOP_TIMEOUT_S)

    def _offer(self, entry: tuple) -> bool:
        """Put ``entry`` in the inbox unless the consumer has stopped; whether it was put."""
        while not self.stopping.is_set():
            try:
                self.inbox.put(entry, timeout=self.poll_s)
                return True
            except queue.Full:
                continue
        return False


def require(needs: PipelineNeeds, *, wait_s: float = DEFAULT_WAIT_S,
            nodes: Callable[[], Sequence[Mapping[str, float]]] = alive_node_resources) -> None:
    """Return once the alive nodes can hold ``needs``; ClusterCapacityError when they cannot for ``wait_s``."""
    _Check(needs, wait_s, nodes).now()


class _Check:
    """Tracks how long the alive nodes have fallen short of the needs."""

    def __init__(self, needs: PipelineNeeds, wait_s: float, nodes: Callable[[], Sequence[Mapping[str, float]]]):
        self.needs, self.wait_s, self.nodes = needs, wait_s, nodes
        self.short_since: float | None = None

    def reset(self) -> None:
        self.short_since = None

    def poll(self) -> None:
        missing = self.needs.shortfall(self.nodes())
        if missing is None:
            self.short_since = None
            return
        now = time.monotonic()
        if self.short_since is None:
            self.short_since = now
        if now - self.short_since >= self.wait_s:
            raise ClusterCapacityError(
                f"the {self.needs.job} cannot go on: missing {missing} (waited {now - self.short_since:.0f} s for "
                "capacity). What is done is kept; rerun the same command once the cluster has room, and it resumes")

    def now(self) -> None:
        """Poll until the needs are met or ``wait_s`` has passed (then raise)."""
        while True:
            self.poll()
            if self.short_since is None:
                return
            time.sleep(min(POLL_S, self.wait_s))
