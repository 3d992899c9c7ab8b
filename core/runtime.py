"""CPU threading for the entry points: call :func:`configure_cpu_threads` before ``import torch``.

OpenMP worker threads spin while they wait for work by default. On a machine whose cores another
process also uses, every one of the many small parallel regions of a training step then waits for
a thread that is descheduled behind a spinning one: steps become several times slower instead of
about 2x. Passive waiting (the threads sleep) fixes that, at a cost on an idle machine, where each
parallel region now wakes a sleeping thread. Measured with ``scripts/bench_train.py`` (cpu preset,
2 cores, s/step idle -> beside one busy process): passive 1.43 -> 1.77 (1.2x); libgomp's default
spinning 0.98 -> 3.30 (3.4x), 1.5 to 12x over repeated runs with other spin counts. On a machine
of your own, ``OMP_WAIT_POLICY=ACTIVE`` is about 1/3 faster per CPU step; GPU training is not
affected. This module imports nothing heavy, so it can run first.
"""

from __future__ import annotations

import os


def configure_cpu_threads() -> None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose otherwise.

    Must run before torch (and so OpenMP) is loaded; afterwards it has no effect. Thread count:
    ``OMP_NUM_THREADS`` when set, else the cores this process may run on.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0))))
