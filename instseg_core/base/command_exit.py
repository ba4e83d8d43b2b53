"""How every command ends: exit status 0 only when everything asked was done, and one line that says why not.

The rule of every command (`instseg-bag`, `instseg-label`, `instseg-studio`, `instseg-synth`, the training and
derivation commands, the nodes):

- 0 (`EXIT_DONE`): everything asked was done;
- 2 (`EXIT_BAD_INPUT`): a problem the user must fix: bad input (a file, an argument, a bag, a topic, a checkpoint,
  a sample) or the machine (a full or read-only disk, a missing permission: any `OSError`). One line on stderr,
  `<command>: <what failed and why>`, naming the file, topic or errno;
- 1 (`EXIT_INTERNAL_ERROR`): anything else, i.e. a bug. One line on stderr, `<command>: internal error: <type>:
  <message> (traceback in <log file>)`; the traceback goes to a log file under `$INSTSEG_LOG_DIR` (default
  `<tmp>/instseg-logs/`), or to stderr with `--debug` (or `INSTSEG_DEBUG=1`), or when the log cannot be written.

`run_command` applies the rule to a command's body and ends it with `CommandExit`, a `SystemExit` whose `str()`
is the printed line (so a caller in the same process, or `pytest.raises(SystemExit, match=...)`, still sees the
reason). `failure_status` prints the line and returns the status, for processes that end with `os._exit` (the ROS
commands skip interpreter finalisation). Nothing here may turn an exception into status 0.
"""

from __future__ import annotations

import argparse
import errno as errno_names
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from instseg_core.base.atomic_files import write_text_atomically

EXIT_DONE, EXIT_INTERNAL_ERROR, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
LOG_DIR_VARIABLE = "INSTSEG_LOG_DIR"
DEBUG_VARIABLE = "INSTSEG_DEBUG"
T = TypeVar("T")


class InputError(Exception):
    """A problem the user must fix (a bad file, argument, bag or topic); the message names what and why.
    A command that ends with one exits with status 2, printing the message without a traceback."""


class CommandExit(SystemExit):
    """The end of a failed command: `code` is the exit status, `str()` the line already printed on stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """`--debug`: print the traceback of an internal error on stderr instead of writing it to a log file."""
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an internal error (default: written to a log file, named)")


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """--debug on the command line (`args.debug`) or INSTSEG_DEBUG=1 in the environment."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def os_error_line(exc: OSError) -> str:
    """An OSError as one line naming the errno, the reason and the file(s): '[Errno 28 ENOSPC] No space left on
    device: /data/rec/metadata.yaml'."""
    code = exc.errno
    name = errno_names.errorcode.get(code, "") if code is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    prefix = f"[Errno {code}{' ' + name if name else ''}] " if code is not None else ""
    return prefix + reason + (f": {' -> '.join(files)}" if files else "")


def describe(exc: BaseException) -> str:
    """The reason of a failure in one line: an OSError by `os_error_line`, anything else by its message (its type
    when the message is empty); newlines become '; '."""
    text = os_error_line(exc) if isinstance(exc, OSError) else (str(exc) or type(exc).__name__)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def log_dir() -> Path:
    """Where tracebacks of internal errors go: $INSTSEG_LOG_DIR, else <tmp>/instseg-logs."""
    return Path(os.environ.get(LOG_DIR_VARIABLE) or Path(tempfile.gettempdir()) / "instseg-logs")


def write_traceback_log(command: str, exc: BaseException) -> Path | None:
    """Write the traceback of `exc` to a new log file (atomically) and return its path; None when it cannot be
    written (a full or read-only disk: the caller prints the traceback instead)."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in command.split()[0] if command) or "instseg"
    path = log_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = f"{command}: {' '.join(sys.argv)}\n" + "".join(traceback.format_exception(exc))
    try:
        return write_text_atomically(path, text)
    except OSError:
        return None


def failure_status(command: str, exc: BaseException, *, debug: bool = False,
                   input_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Print the one line of a command that ended with `exc` on stderr and return its exit status (module
    docstring): 2 for `InputError`, `OSError` and `input_errors`, 1 for anything else (the traceback logged, or
    printed with `debug`), 130 for KeyboardInterrupt."""
    return report_failure(command, exc, debug=debug, input_errors=input_errors)[0]


def report_failure(command: str, exc: BaseException, *, debug: bool = False,
                   input_errors: tuple[type[BaseException], ...] = ()) -> tuple[int, str]:
    """`failure_status`, returning (status, the line printed)."""
    if isinstance(exc, KeyboardInterrupt):
        line = f"{command}: interrupted before it finished"
        print(line, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED, line
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, (InputError, OSError, *input_errors)):
        line = f"{command}: {describe(exc)}"
        print(line, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT, line
    line = f"{command}: internal error: {type(exc).__name__}: {describe(exc)}"
    if debug:
        where = "above"
    elif (logged := write_traceback_log(command, exc)) is not None:
        where = f"in {logged}; --debug prints it"
    else:
        traceback.print_exception(exc, file=sys.stderr)
        where = "above (the log could not be written)"
    print(f"{line} (traceback {where})", file=sys.stderr, flush=True)
    return EXIT_INTERNAL_ERROR, line


def run_command(command: str, body: Callable[[], T], *, debug: bool = False,
                input_errors: tuple[type[BaseException], ...] = ()) -> T:
    """Run a command's `body` and return its result; if it fails, print the one line and raise `CommandExit` with
    the status of `failure_status` (chained to the exception). A `SystemExit` with a message (the old way to fail,
    `raise SystemExit("reason")`, which Python ends with status 1) becomes that line and status 2; a `SystemExit`
    with a status passes unchanged."""
    try:
        return body()
    except CommandExit:
        raise
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            raise
        line = f"{command}: {exc.code}"
        print(line, file=sys.stderr, flush=True)
        raise CommandExit(EXIT_BAD_INPUT, line) from exc
    except (Exception, KeyboardInterrupt) as exc:
        status, line = report_failure(command, exc, debug=debug, input_errors=input_errors)
        raise CommandExit(status, line) from exc
