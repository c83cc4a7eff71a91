"""The one place a job starts or joins Ray.

Under ``ray job submit``, or with ``RAY_ADDRESS`` set, ``ray.init()`` joins that cluster; otherwise it starts a
local Ray on this machine. Jobs call :func:`start_ray` before their first Ray call, with the options they need.
"""

from __future__ import annotations


def start_ray(*, quiet: bool = False) -> None:
    """Join the job's cluster (``RAY_ADDRESS``, ``ray job submit``) or start a local Ray; nothing when Ray is
    already initialised (a notebook's or a test's ``ray.init``).

    ``quiet``: no dashboard, no worker log lines on the driver, warnings only, and no Ray Data progress bars or
    execution banners (what the demo prints instead are its own step lines)."""
    import ray

    if not ray.is_initialized():
        if quiet:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
        else:
            ray.init()
    if quiet:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
