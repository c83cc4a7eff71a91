"""The one place a job starts, joins and stops Ray.

Under ``ray job submit``, or with ``RAY_ADDRESS`` set, ``ray.init()`` joins that cluster; otherwise it starts a
local Ray on this machine. Jobs call :func:`start_ray` before their first Ray call, with the options they need.
A job that stops on an error calls :func:`stop_ray` (``jobs.cli.job_main`` does) before its last line: Ray Data's
executors first, then Ray, and nothing connects again afterwards.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def start_ray(*, quiet: bool = False) -> None:
    """Join the job's cluster (``RAY_ADDRESS``, ``ray job submit``) or start a local Ray; nothing when Ray is
    already initialised (a notebook's or a test's ``ray.init``). Ray Data's executors started from now on are
    recorded, for :func:`stop_ray`.

    ``quiet``: no dashboard, no worker log lines on the driver, warnings only, and no Ray Data progress bars or
    execution banners (what the demo prints instead are its own step lines)."""
    import ray

    _allow_auto_connect(True)
    if not ray.is_initialized():
        if quiet:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
        else:
            ray.init()
    context = ray.data.DataContext.get_current()
    executors = _executors_module()
    if executors is not None:
        executors.track(context)
    if quiet:
        context.enable_progress_bars = False
        context.print_on_execution_start = False


def ray_is_running() -> bool:
    """Whether this process is connected to Ray (without importing Ray when nothing has)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def running_executors() -> set[Any]:
    """Ray Data's streaming executors of this process (empty when Ray Data was never imported)."""
    executors = _executors_module() if "ray.data" in sys.modules else None
    return executors.executors() if executors is not None else set()


def stop_executors(executors: set[Any], reason: BaseException | None = None, timeout_s: float = 30.0) -> None:
    """Shut ``executors`` (from :func:`running_executors`) down, because of ``reason``, and wait for their
    threads."""
    module = _executors_module() if executors else None
    if module is not None:
        module.stop(executors, reason, timeout_s)


def stop_ray(*, shutdown: bool = True, reason: BaseException | None = None) -> None:
    """Stop every Ray Data executor of this process and wait for its threads; then, with ``shutdown``, disconnect
    from Ray and turn Ray's auto-connect off (until the next :func:`start_ray`), so that nothing left over (a
    late ``ray.get`` in some thread, a finaliser) connects this process to the cluster again."""
    stop_executors(running_executors(), reason)
    if shutdown and ray_is_running():
        import ray

        ray.shutdown()
        _allow_auto_connect(False)


def _executors_module() -> Any:
    """``pipeline.ray_data_executors``, or None where this Ray has no such internals (another Ray version): the
    jobs then run, only without the clean stop."""
    try:
        from pipeline import ray_data_executors
    except (ImportError, AttributeError):
        return None
    return ray_data_executors


def _allow_auto_connect(allowed: bool) -> None:
    """Ray's auto-init (the first ``ray.get`` of a process that is not connected calls ``ray.init()``) on or off."""
    hook = sys.modules.get("ray._private.auto_init_hook")
    if hook is not None and hasattr(hook, "enable_auto_connect"):
        hook.enable_auto_connect = allowed and os.environ.get("RAY_ENABLE_AUTO_CONNECT", "") != "0"
