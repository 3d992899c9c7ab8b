"""Output folders and files: the one place that checks a folder can take our results and writes
files whole (a crash or a full disk never leaves a half-written file under its final name)."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from core.errors import UserError, describe_os_error


class OutputError(UserError, OSError):
    """An output folder or file that cannot be written; the message says which and why."""


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


def default_file_mode() -> int:
    """The mode a plain ``open(..., 'w')`` gives a new file under this process's umask (0o644 under
    the usual 022). Read from /proc on Linux; elsewhere by setting and restoring the umask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def share_like_other_outputs(path) -> None:
    """Give ``path`` (a file, or every file below a folder) the mode of our other outputs.

    safetensors writes its files with mode 0600, readable by their owner alone; on a shared
    cluster the rest of a team could read every log and image of a run but not its weights.
    """
    path = Path(path)
    mode = default_file_mode()
    for f in [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()):
        os.chmod(f, mode)


def write_atomically(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed and ``path`` keeps its previous content; an
    OSError (e.g. a full disk) becomes an :class:`OutputError` naming the file. The file gets the
    mode of a plain new file (:func:`share_like_other_outputs`), whatever ``write`` created.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        share_like_other_outputs(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {describe_os_error(e)}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class WorkspaceInUseError(OutputError):
    """Another process holds the workspace's lock; the message names it."""


class WorkspaceLock:
    """An exclusive lock on a workspace folder while a run writes into it: ``<folder>/.lock``.

    The lock is the operating system's (``flock``): it is released when the holding process ends
    in any way (exit, crash, ``kill -9``), so a lock left by a dead run never blocks the next one;
    the file itself only says who held it last (host, pid, start time, command line). Without
    ``fcntl`` (Windows) nothing is locked.
    """

    FILE = ".lock"

    def __init__(self, folder):
        self.path = Path(folder) / self.FILE
        self._file = None

    def acquire(self) -> "WorkspaceLock":
        """Take the lock or raise :class:`WorkspaceInUseError` naming the holder."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = describe_holder(f.read())
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkspaceInUseError(
                    f"{self.path.parent} is in use by another run ({holder}).\nWait for it to end, stop it, or "
                    f"give this run another --workspace. (The lock goes away by itself when that process ends, "
                    f"even if it is killed.)"
                ) from None
            raise OutputError(f"cannot lock {self.path}: {describe_os_error(e)}") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "command": " ".join(sys.argv)}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the flock
            self._file = None


def describe_holder(text: str) -> str:
    """'pid 123 on host-a since 2026-12-05 10:00:00: python main.py big ...' from a lock file's JSON."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
