"""What every job's entry point shares: bad input ends the job with one line and exit status 2; a cluster too
small to go on (nodes lost) ends it with one line and exit status 1 (a rerun resumes)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

from drn.errors import InputError
from pipeline.capacity import ClusterCapacityError

Main = Callable[[Sequence[str] | None], int]


def job_main(main: Main) -> Main:
    """Decorate a job's ``main``: an ``InputError`` prints ``error: <message>`` to stderr and returns 2, a
    ``ClusterCapacityError`` prints it the same way and returns 1."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ClusterCapacityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapper
