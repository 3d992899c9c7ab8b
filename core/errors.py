"""One error path for people: errors whose message says what to do, and the runner that shows them.

Every error a user can act on (bad options, a missing weight file, an unreadable image, an output
folder that cannot be written, a dataset with no usable object, ...) derives from
:class:`UserError`. Entry points (``main.py``, ``infer.py``, ``scripts/eval.py``,
``scripts/convert_mesh.py``, ``scripts/make_shards.py``, the app's start-up) run their work
through :func:`run`, which turns such an error into one screen on stderr and its exit code, and
anything else into the usual traceback (a bug to report, not a message to act on).

Exit codes: 2 for input or setup a person must change (the default), 1 for a run that failed while
its work so far is safe (a checkpoint that could not be written, a full disk), 130 for Ctrl-C.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable, Optional

RULE = "-" * 78
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UserError(Exception):
    """An error a person can act on: the message says what happened and what to do."""

    exit_code = 2


def describe_os_error(e: BaseException) -> str:
    """A short human reason for a failed write (disk full, permission, ...)."""
    if not isinstance(e, OSError):  # e.g. safetensors' or torch's own errors around an OS error
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno == errno.EFBIG:
        return "file size limit exceeded"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return e.strerror or type(e).__name__


def show(message: str, program: str) -> None:
    """Print ``message`` as one screen on stderr, under the program's name."""
    print(f"\n{RULE}\n{program}: error: {message}\n{RULE}", file=sys.stderr, flush=True)


def run(
    entry: Callable[[], int],
    program: str,
    disk_full_note: Optional[Callable[[], str]] = None,
    interrupt_note: str = "",
) -> int:
    """``entry()``'s exit code; a :class:`UserError` is shown (:func:`show`) and gives its exit code.

    A full disk (an OSError with ENOSPC, EDQUOT or EFBIG from wherever it was written) is shown with
    ``disk_full_note()`` (e.g. which checkpoint is intact) and gives 1; Ctrl-C gives 130 with
    ``interrupt_note``. Any other exception propagates.
    """
    try:
        return entry()
    except UserError as e:
        show(str(e), program)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\ninterrupted{': ' + interrupt_note if interrupt_note else ''}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        note = disk_full_note() if disk_full_note is not None else ""
        show(f"{e.filename or 'a file'}: {describe_os_error(e)}." + (f" {note}" if note else ""), program)
        return 1
