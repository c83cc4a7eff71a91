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
