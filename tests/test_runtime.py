"""core.runtime: the OpenMP settings every entry point applies before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.runtime import configure_cpu_threads

REPO = Path(__file__).resolve().parents[1]


def test_passive_waiting_and_affinity_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    configure_cpu_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))


def test_the_users_settings_win(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configure_cpu_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["OMP_NUM_THREADS"] == "1"


def test_entry_points_configure_before_torch_loads():
    """Each script that uses torch calls configure_cpu_threads before its first torch import."""
    scripts = [REPO / "main.py", REPO / "infer.py", *sorted((REPO / "scripts").glob("*.py"))]
    checked = 0
    for path in scripts:
        lines = path.read_text().splitlines()
        torch_at = next((i for i, l in enumerate(lines) if l.startswith(("import torch", "from torch"))), None)
        core_at = next((i for i, l in enumerate(lines) if l.startswith("from core")), None)
        if torch_at is None and core_at is None:
            continue  # no torch (render_blender runs inside Blender, fetch_test_meshes and download_weights need none)
        first = min(i for i in (torch_at, core_at) if i is not None)
        call = next((i for i, l in enumerate(lines) if l.startswith("configure_cpu_threads()")), None)
        if path.name == "download_weights.py":
            continue  # downloads only; loads no model
        assert call is not None and call < first + 3 and (torch_at is None or call < torch_at), path.name
        checked += 1
    assert checked >= 10


def test_a_started_entry_point_sleeps_its_threads():
    code = "import runpy, sys, os; sys.argv = ['main.py', '--help']\n" \
           "try:\n    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
           "print('POLICY', os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "POLICY PASSIVE" in run.stdout, run.stderr[-2000:]
