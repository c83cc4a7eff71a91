"""What every job's entry point shares: bad input ends the job with one line and exit status 2; a cluster too
small to go on (nodes lost) ends it with one line and exit status 1 (a rerun resumes)."""

from __future__ import annotations

import argparse
import errno
import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from drn.errors import InputError, shown
from pipeline.capacity import ClusterCapacityError
from pipeline.ray_runtime import ray_is_running, stop_ray

Main = Callable[[Sequence[str] | None], int]
NAME_MAX = 255  # the longest file or folder name most file systems take


def job_main(main: Main) -> Main:
    """Decorate a job's ``main``: an ``InputError`` prints ``error: <message>`` to stderr and returns 2, a
    ``ClusterCapacityError`` prints it the same way and returns 1.

    An argument too long to be a path (an ``OSError`` "File name too long", e.g. a long list given where a file
    was expected) is bad input too: the message names the flag and shows the start of the value.

    On any error the job ends cleanly before its message (:func:`end_ray`): Ray Data's executors are stopped,
    then Ray is shut down when the job connected to it, so the message is the last thing the job prints.
    """

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        owns_ray = not ray_is_running()  # a notebook's or a test's Ray stays up
        try:
            return main(argv)
        except BaseException as error:
            ending = error_ending(error, argv)
            end_ray(owns_ray, error)
            if ending is None:
                raise
            message, status = ending
            print_last(f"error: {message}")
            return status

    return wrapper


def error_ending(error: BaseException, argv: Sequence[str] | None) -> tuple[str, int] | None:
    """(message, exit status) for an error a job reports in one line; None for any other (raised as it is)."""
    if isinstance(error, InputError):
        return str(error), 2
    if isinstance(error, ClusterCapacityError):
        return str(error), 1
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return too_long_message(sys.argv[1:] if argv is None else list(argv), error), 2
    return None


def end_ray(owns_ray: bool, error: BaseException) -> None:
    """Stop Ray Data's executors (failed with ``error``) and wait for their threads; shut Ray down when the job
    started or joined it."""
    if "ray" not in sys.modules:
        return
    try:
        stop_ray(shutdown=owns_ray, reason=error)
    except Exception as failure:  # the job's own error still comes last, in one line
        print(f"note: stopping Ray failed: {shown(failure, 200)}", file=sys.stderr, flush=True)


def print_last(line: str) -> None:
    """Print ``line`` to stderr after whatever stdout still buffers, both flushed."""
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)


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


def run_with_flag_names(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                        argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and ``run`` the job, its library errors naming the job's flags (:func:`flag_names`)."""
    args = parser.parse_args(argv)
    with flag_names(parser):
        return run(args)


@contextmanager
def flag_names(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Library errors in the job's terms: a parameter named in an ``InputError`` (``top_k``, ``num_actors``) is
    shown as the flag that sets it (``--top-k``, ``--num-actors``). Only names with an underscore are replaced,
    so plain words of a message stay as they are."""
    try:
        yield
    except InputError as error:
        message = name_flags(str(error), parser)
        if message == str(error):
            raise
        raised = InputError(message)
        raised.path, raised.line = error.path, error.line
        raise raised from None


def name_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with each parameter name of ``parser`` that has an underscore replaced by its long flag."""
    for action in parser._actions:
        flags = [option for option in action.option_strings if option.startswith("--")]
        if flags and "_" in action.dest:
            message = re.sub(rf"(?<![\w-]){re.escape(action.dest)}(?!\w)", flags[0], message)
    return message
