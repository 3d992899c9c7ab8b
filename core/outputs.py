"""Output folders and files: the one place that checks a folder can take our results and writes
files whole (a crash or a full disk never leaves a half-written file under its final name)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable


class OutputError(OSError):
    """An output folder or file that cannot be written; the message says which and why."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


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


def prepare_output_dir(path, flag: str = "--workspace") -> Path:
    """Create ``path`` (and parents) and check that a file can be written in it.

    Raises :class:`OutputError` naming ``flag`` when the path is a file, lies under a file, or
    cannot be created or written (permissions, read-only or full disk).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a folder: give a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OutputError(f"{flag} {path} cannot be written: {describe_os_error(e)}") from None
    return path


def write_atomically(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    OSError (e.g. a full disk) becomes an :class:`OutputError` naming the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {describe_os_error(e)}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
