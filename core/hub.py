"""Where published weights come from: the ``pretrained/`` folder, the offline policy, the download blocker.

Every piece of code that needs a published file (LGM checkpoints, the multi-view diffusion
folders, the LPIPS backbone, rembg's model) asks here, so one rule holds for all of them:

1. look in ``pretrained/`` (and the caches the file's own library keeps) first;
2. download only when allowed: not in offline mode (``LGM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``;
   the tests set it) and the host answers within seconds (:func:`download_blocker`), so code
   without network fails in moments with a message instead of waiting through retries;
3. otherwise stop with a one-screen message naming the file and ``scripts/download_weights.py``.

This module imports nothing heavy and nothing else of ``core``.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAINED_DIR = REPO_ROOT / "pretrained"
HF_HOST = "huggingface.co"

_reachable: dict[str, bool] = {}  # host -> reachable, probed once per process


def offline() -> bool:
    """True when downloads must not be tried (LGM_OFFLINE=1 or HF_HUB_OFFLINE=1; tests set it)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("LGM_OFFLINE", "HF_HUB_OFFLINE"))


def find_pretrained(*names: str, also_in=()) -> Optional[Path]:
    """The first of ``pretrained/<name>`` for ``names`` (relative paths), then the same names in
    the folders ``also_in`` (a library's own cache), that is a file; None when none is."""
    for folder in (PRETRAINED_DIR, *also_in):
        for name in names:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def _probe(host: str, timeout: float, port: int = 443) -> bool:
    """Can a TCP connection to ``host``:``port`` be opened within ``timeout`` seconds (DNS included)?"""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)  # a hanging DNS lookup cannot block us
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def download_blocker(host: str, timeout: float = 3.0) -> Optional[str]:
    """Why nothing can be downloaded from ``host`` now, or None when it can.

    Offline mode (``LGM_OFFLINE`` / ``HF_HUB_OFFLINE``) blocks every host; otherwise the host is
    probed once per process (at most ``timeout`` seconds).
    """
    if offline():
        return "offline mode is set (LGM_OFFLINE / HF_HUB_OFFLINE)"
    if host not in _reachable:
        _reachable[host] = _probe(host, timeout)
    return None if _reachable[host] else f"{host} cannot be reached (no network?)"
