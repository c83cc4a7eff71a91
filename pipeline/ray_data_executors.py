"""Ray Data's streaming executors of this process, so that a job can stop them before it shuts Ray down.

Each Ray Data execution runs in a ``StreamingExecutor`` thread (plus the threads that fetch its output). A job
that stops on an error while a dataset is still running must shut those down first: left alive, they call Ray
after ``ray.shutdown()``, print tracebacks ("Ray has not been started yet") after the job's last line, and Ray's
auto-init even connects the process to the cluster again. :class:`TrackExecutors`, registered in the
``DataContext`` by :func:`pipeline.ray_runtime.start_ray`, records every executor started in this process.

Imports Ray Data: import this module only where Ray is used.
"""

from __future__ import annotations

import threading
import weakref

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.execution.streaming_executor import StreamingExecutor

_STARTED: weakref.WeakSet[StreamingExecutor] = weakref.WeakSet()
_LOCK = threading.Lock()


class TrackExecutors(ExecutionCallback):
    """Records each executor of the datasets built with the context it is registered in."""

    def before_execution_starts(self, executor: StreamingExecutor) -> None:
        with _LOCK:
            _STARTED.add(executor)


def track(context: DataContext) -> None:
    """Record the executors of the datasets built with ``context`` from now on (where this Ray takes custom
    execution callbacks; elsewhere only running executor threads are found)."""
    classes = getattr(context, "custom_execution_callback_classes", None)
    if classes is not None and TrackExecutors not in classes:
        classes.append(TrackExecutors)


def executors() -> set[StreamingExecutor]:
    """Every executor of this process that is recorded or still running (a dataset built before ``track``)."""
    with _LOCK:
        known = set(_STARTED)
    return known | {t for t in threading.enumerate() if isinstance(t, StreamingExecutor)}


def stop(stopping: set[StreamingExecutor], reason: BaseException | None = None, timeout_s: float = 30.0) -> None:
    """Shut ``stopping`` down (their tasks and actors are cancelled; Ray Data logs them as failed with
    ``reason``) and wait for their threads to end.

    A stopped executor's output iterator ends, so the threads reading it (Ray Data's prefetcher, a job's own
    reader) end too. Stopping an executor twice does nothing."""
    failure = reason if isinstance(reason, Exception) else RuntimeError(f"stopped by the job ({reason!r})")
    for executor in stopping:
        executor.shutdown(force=True, exception=failure)
    for executor in stopping:
        if executor.ident is not None:
            executor.join(timeout_s)
