"""Run-time rules shared by every entry point: CPU threading, and the precision arithmetic runs in.

CPU threading: call :func:`configure_cpu_threads` before ``import torch``.

OpenMP worker threads spin while they wait for work by default. On a machine whose cores another
process also uses, every one of the many small parallel regions of a training step then waits for
a thread that is descheduled behind a spinning one: steps become several times slower instead of
about 2x. Passive waiting (the threads sleep) fixes that, at a cost on an idle machine, where each
parallel region now wakes a sleeping thread. Measured with ``scripts/bench_train.py`` (cpu preset,
2 cores, s/step idle -> beside one busy process): passive 1.43 -> 1.77 (1.2x); libgomp's default
spinning 0.98 -> 3.30 (3.4x), 1.5 to 12x over repeated runs with other spin counts. On a machine
of your own, ``OMP_WAIT_POLICY=ACTIVE`` is about 1/3 faster per CPU step; GPU training is not
affected. This module imports nothing heavy, so it can run first.

Precision: :func:`at_least_fp32` is the one rule for code that needs float32 arithmetic (losses,
rendering, camera geometry): half-precision tensors (bf16 training, fp16 inference) are upcast,
float32 and float64 are left alone. A plain ``.float()`` would instead cast a float64 model down,
and the float64 tests (``tests/test_devices.py``) use float64 to find state that did not follow
the model, as a tensor left on the CPU would on a GPU.
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


def at_least_fp32(x):
    """``x`` as float32 when it is a 16-bit float tensor, else unchanged (float32, float64). Tensor -> Tensor"""
    return x.float() if x.dtype.itemsize < 4 else x


def no_autocast(device):
    """A context that turns autocast off on ``device`` (a no-op for devices autocast does not know, e.g. meta)."""
    import contextlib

    import torch

    kind = torch.device(device).type
    if kind in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=kind, enabled=False)
    return contextlib.nullcontext()
