"""scripts/gpu_check.py --dry-run: the GPU check's whole sequence on the CPU with tiny sizes, so
the script a lent GPU runs has been run before that day."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_stage(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--output", str(tmp_path / "check.json"),
         "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "check.json").read_text())
    rows = {(r["stage"], r["what"].split(":")[0].split(" ")[0]): r for r in report["rows"]}
    assert report["device"] == "cpu" and report["dry_run"]
    assert rows[("render", "torch")]["status"] == "ok" and rows[("render", "torch")]["forward_backward_ms"] > 0
    assert rows[("render", "gsplat")]["status"].startswith("skipped")  # no CUDA here
    train = [r for r in report["rows"] if r["stage"] == "train"]
    assert [r["status"] for r in train] == ["ok", "ok", "not run (dry run)"]  # the --compile row runs on a GPU
    assert train[1]["steps_logged"] and train[1]["weights"] and train[1]["step_s"] > 0
    assert [r["status"] for r in report["rows"] if r["stage"] == "infer"] == ["ok"] * 3  # --offload none, model, sequential
    assert (tmp_path / "work" / "infer" / "object.ply").is_file()
    out = proc.stdout
    assert "continuing at step 2" in (tmp_path / "work" / "train_output.txt").read_text()
    assert "stage" in out and "figures:" in out  # the table and where the JSON went
