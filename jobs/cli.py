"""What every job's entry point shares: bad input ends the job with one line and exit status 2; a cluster too
small to go on (nodes lost) ends it with one line and exit status 1 (a rerun resumes)."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable, Sequence

from drn.errors import InputError, shown
from pipeline.capacity import ClusterCapacityError

Main = Callable[[Sequence[str] | None], int]
NAME_MAX = 255  # the longest file or folder name most file systems take


def job_main(main: Main) -> Main:
    """Decorate a job's ``main``: an ``InputError`` prints ``error: <message>`` to stderr and returns 2, a
    ``ClusterCapacityError`` prints it the same way and returns 1.

    An argument too long to be a path (an ``OSError`` "File name too long", e.g. a long list given where a file
    was expected) is bad input too: the message names the flag and shows the start of the value.
    """

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
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            print(f"error: {too_long_message(sys.argv[1:] if argv is None else list(argv), exc)}", file=sys.stderr)
            return 2

    return wrapper


def too_long_message(argv: Sequence[str], error: OSError) -> str:
    """Which argument was too long to be a file name, and what to do about it."""
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if not flag and i > 0 and argv[i - 1].startswith("--"):
            flag = argv[i - 1]
        if any(len(part) > NAME_MAX for part in value.split("/")):
            return (f"{flag or 'an argument'} {shown(value, 60)} is too long to be a file or folder name "
                    "(a long list of names goes in a file, one name a line)")
    return f"a path is too long for the file system ({shown(error, 160)})"
