"""One run per workspace: a lock while a run writes, no silent mixing of two runs, weights readable
like every other output, and the summary lines a user reads at the end."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

from conftest import ROOT
from core.outputs import default_file_mode
from test_training import MICRO_CLI, run_main


def start_main(args, cwd, log):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *MICRO_CLI, *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def test_a_second_run_is_refused_while_the_first_holds_the_workspace(tmp_path):
    ws = tmp_path / "ws"
    with open(tmp_path / "first.log", "w") as log:
        first = start_main(["--workspace", str(ws), "--max_steps", "100000", "--save_every", "100000"], tmp_path, log)
        try:
            wait_for(lambda: (ws / "train_log.jsonl").is_file() or first.poll() is not None)
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            # a second fresh run, and a second --resume_from / --overwrite run: both refused, naming the holder
            for extra in ([], ["--overwrite"]):
                proc = run_main(["--workspace", str(ws), "--max_steps", "2", *extra], tmp_path, expect_rc=2)
                out = proc.stdout + proc.stderr
                assert "is in use by another run" in out and f"pid {first.pid}" in out and "main.py" in out, out
                assert "Traceback" not in out
            rows_before = (ws / "train_log.jsonl").read_text()
        finally:
            first.send_signal(signal.SIGKILL)  # a crash: the lock must not outlive it
            first.wait(timeout=60)
    assert json.loads(rows_before.splitlines()[0])["step"] == 1
    # the dead run left its lock file and its log: a fresh run is refused as "used", not as "locked" ...
    proc = run_main(["--workspace", str(ws), "--max_steps", "2"], tmp_path, expect_rc=2)
    assert "holds an earlier run" in proc.stdout + proc.stderr and "in use" not in proc.stdout + proc.stderr
    # ... and --overwrite starts over at once
    proc = run_main(["--workspace", str(ws), "--max_steps", "2", "--overwrite"], tmp_path)
    assert "--overwrite: removed the earlier run's" in proc.stdout + proc.stderr
    steps = [json.loads(line)["step"] for line in (ws / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the killed run's rows are gone, not interleaved


def test_a_fresh_run_never_replaces_a_finished_one_silently(tmp_path):
    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2", "--save_every", "2"], tmp_path)
    weights = (ws / "model.safetensors").read_bytes()
    proc = run_main(["--workspace", str(ws), "--max_steps", "3", "--seed", "1"], tmp_path, expect_rc=2)
    out = proc.stdout + proc.stderr
    assert "holds an earlier run (checkpoint step_2, model.safetensors, train_log.jsonl)" in out
    assert "--resume_from latest" in out and "--overwrite" in out and "Traceback" not in out
    assert (ws / "model.safetensors").read_bytes() == weights  # untouched
    assert [json.loads(r)["step"] for r in (ws / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    # continuing it is the way on
    proc = run_main(["--workspace", str(ws), "--max_steps", "3", "--resume_from", "latest"], tmp_path)
    assert "continuing at step 2" in proc.stdout + proc.stderr


def test_resume_from_latest_of_nothing_creates_no_folder(tmp_path):
    ws = tmp_path / "typo_ws"
    proc = run_main(["--workspace", str(ws), "--max_steps", "2", "--resume_from", "latest"], tmp_path, expect_rc=2)
    assert "no complete checkpoint" in proc.stdout + proc.stderr
    assert not ws.exists()


def test_weights_are_as_readable_as_the_other_outputs(tmp_path):
    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2", "--save_every", "2", "--ema_decay", "0.9"], tmp_path)
    want = default_file_mode()
    files = [ws / "model.safetensors", ws / "model_ema.safetensors", ws / "train_log.jsonl"]
    files += [p for p in (ws / "checkpoints").rglob("*") if p.is_file()]
    modes = {str(p.relative_to(ws)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(want)}, modes


def test_the_summary_line_is_printed_when_the_last_step_evaluates(tmp_path):
    proc = run_main(["--workspace", str(tmp_path / "ws"), "--max_steps", "2", "--eval_every", "2"], tmp_path)
    out = proc.stdout + proc.stderr
    assert "held-out PSNR" in out and "vs blank-white prediction" in out
    rows = [json.loads(r) for r in (tmp_path / "ws" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]  # evaluated once, not again for the summary
