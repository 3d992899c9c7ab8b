"""Shared fixtures. Tests run on the CPU; tests marked ``gpu`` are skipped without CUDA."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# Before torch starts OpenMP: idle threads sleep instead of spinning, so test subprocesses
# (training runs, launchers) do not starve each other on small machines.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))
# Tests never download: code that would fetch weights stops with its offline message instead.
os.environ["LGM_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from core.options import Options  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def read_spec(path: Path) -> dict[str, tuple[int, ...]]:
    """A spec list ('name (d0, d1, ...)' per line, '#' comments) as {name: shape}, in file order."""
    spec = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape = line.split(" ", 1)
        spec[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return spec


def micro_options(**changes) -> Options:
    """A very small LGM configuration (32 px in, 16x16 Gaussians per view) for fast tests."""
    base = dict(
        input_size=32,
        down_channels=(32, 64),
        down_attention=(False, True),
        mid_attention=True,
        up_channels=(64,),
        up_attention=(True,),
        attention_heads=4,
        splat_size=16,
        output_size=32,
        num_views=6,
        batch_size=2,
        lambda_lpips=0.0,
        mixed_precision="no",
        num_workers=0,
        renderer="torch",
    )
    base.update(changes)
    return Options(**base)


@pytest.fixture
def micro_opt() -> Options:
    return micro_options()
