"""Several processes, as on 8 GPUs, with two CPU processes (``acc_configs/cpu2.yaml``, gloo):
every process's sampler and dataset see every epoch, also after a resume inside an epoch, and
evaluation scores each held-out object exactly once."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from conftest import ROOT
from core.training import EpochSampler, loader_position, steps_per_epoch
from test_training import MICRO_CLI

PROBE = ROOT / "tests" / "probes" / "record_data.py"
N_TRAIN, BATCH, PROCS = 8, 2, 2  # MICRO_CLI: 8 objects, batch 2 -> 2 steps per epoch on 2 processes


def launch(args, cwd, record_dir, timeout=400):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "acc_configs" / "cpu2.yaml"),
           str(PROBE), *MICRO_CLI, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "RECORD_DIR": str(record_dir)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def records(record_dir, rank: int, split: str) -> list[dict]:
    path = record_dir / f"rank{rank}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["split"] == split]


def expected_items(rank: int, epochs: int) -> list[tuple[int, int]]:
    """(epoch, index) of every training item ``rank`` should load: the EpochSampler's order of each
    epoch, cut into batches, batches dealt out to the processes in turn."""
    out = []
    for epoch in range(epochs):
        sampler = EpochSampler(N_TRAIN, seed=0)
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i : i + BATCH] for i in range(0, N_TRAIN, BATCH)]
        out += [(epoch, i) for batch in batches[rank::PROCS] for i in batch]
    return out


@pytest.mark.slow
def test_every_process_sees_every_epoch_and_each_object_is_evaluated_once(tmp_path):
    ws = tmp_path / "ws"
    first, second = tmp_path / "run1", tmp_path / "run2"
    first.mkdir(), second.mkdir()
    # run 1 stops inside epoch 1 (step 3 of 2 per epoch) with a checkpoint; run 2 resumes there, ends with epoch 2
    out1 = launch(["--workspace", str(ws), "--max_steps", "3", "--save_every", "3"], tmp_path, first)
    out2 = launch(["--workspace", str(ws), "--max_steps", "6", "--save_every", "3", "--resume_from", "latest"], tmp_path, second)
    assert "continuing at step 3" in out2 and "identical weights on 2 processes" in out2

    per_item = BATCH  # items per batch of one process
    for rank in range(PROCS):
        want = expected_items(rank, epochs=3)
        got1 = [(r["epoch"], r["index"]) for r in records(first, rank, "train")]
        got2 = [(r["epoch"], r["index"]) for r in records(second, rank, "train")]
        # run 1: epochs 0 and the first batch of 1 (the loader reads one batch ahead, so maybe one more)
        assert len(got1) in (3 * per_item, 4 * per_item), got1
        assert got1 == want[: len(got1)], (rank, got1, want)
        # run 2: from the second batch of epoch 1, through epoch 2; the dataset knows each epoch
        assert got2 == want[3 * per_item :], (rank, got2, want[3 * per_item :])

    for run, out in ((first, out1), (second, out2)):
        evaluated = Counter(r["index"] for rank in range(PROCS) for r in records(run, rank, "eval"))
        assert evaluated == Counter({0: 1, 1: 1}), evaluated  # 2 held-out objects, once each, split across processes
    rows = [json.loads(line) for line in (ws / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(r["num_objects"] == 2 for r in rows)
    assert all(len({o["uid"] for o in r["objects"]}) == 2 for r in rows)


def test_epoch_arithmetic_follows_accelerates_accumulation():
    """With 5 batches per epoch and 2 batches per optimizer step, Accelerate steps after batches
    2, 4 and 5 (the end of the loader): 3 steps per epoch, and the position after step k is where
    Accelerate's own step count puts it."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from torch.utils.data import DataLoader, TensorDataset

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
        model = torch.nn.Linear(1, 1)
        loader = acc.prepare(DataLoader(TensorDataset(torch.arange(5.0)[:, None]), batch_size=1))
        model = acc.prepare(model)
        ends = []  # (epoch, batches used in that epoch) after each optimizer step
        for epoch in range(3):
            for b, _ in enumerate(loader):
                with acc.accumulate(model):
                    pass
                if acc.sync_gradients:
                    ends.append((epoch, b + 1))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert steps_per_epoch(5, 2) == 3 == len(ends) // 3
    for step, (epoch, used) in enumerate(ends, start=1):
        e, skip = loader_position(step, 5, 2)
        want = (epoch, used) if used < 5 else (epoch + 1, 0)  # an epoch's last step leaves the next epoch unstarted
        assert (e, skip) == want, (step, e, skip, want)
