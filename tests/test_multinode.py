"""Two "nodes" on 127.0.0.1: the multi-node config of acc_configs/ launched twice with accelerate
(--num_machines 2, --machine_rank 0 and 1, one CPU process each), training 3 steps on shards."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from test_training import MICRO_CLI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_config(path, port: int):
    """acc_configs/gpu8x2_node0.yaml made to fit one machine: both nodes at 127.0.0.1, one process
    each (num_processes counts all machines' processes), fp32 (no GPU)."""
    cfg = yaml.safe_load((ROOT / "acc_configs" / "gpu8x2_node0.yaml").read_text())
    assert cfg["num_machines"] == 2 and cfg["distributed_type"] == "MULTI_GPU"
    cfg.update(num_processes=2, main_process_ip="127.0.0.1", main_process_port=port, mixed_precision="no")
    cfg.pop("gpu_ids", None)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_nodes_train_on_shards_and_agree(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    # 12 synthetic objects in shards of 4: each node reads its own 6 per epoch (3 batches of 2)
    data = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_shards.py"), "--output", str(tmp_path / "shards"),
         "--samples-per-shard", "4", *MICRO_CLI, "--num_train_objects", "12"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert data.returncode == 0, data.stdout + data.stderr
    shards = str(tmp_path / "shards" / "shards-{000000..000002}.tar")

    config = two_node_config(tmp_path / "two_nodes.yaml", free_port())
    ws = tmp_path / "ws"  # one workspace, as on a filesystem both nodes share
    nodes = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--machine_rank", str(rank),
               str(ROOT / "main.py"), *MICRO_CLI, "--num_train_objects", "12", "--dataset", "shards", "--data_root", shards,
               "--workspace", str(ws), "--max_steps", "3"]
        log = open(tmp_path / f"node{rank}.log", "w")
        nodes.append((subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=170) for p, _ in nodes]
    finally:
        for p, log in nodes:
            if p.poll() is None:
                p.kill()
            log.close()
    out0, out1 = ((tmp_path / f"node{r}.log").read_text() for r in (0, 1))
    assert codes == [0, 0], out0[-3000:] + "\n----- node 1 -----\n" + out1[-3000:]
    assert "2 process(es)" in out0
    assert "each of 2 process(es) reads 6 of them per epoch" in out0
    assert "identical weights on 2 processes" in out0  # parameter sums gathered from both nodes
    steps = [json.loads(line)["step"] for line in (ws / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (ws / "checkpoints" / "step_3" / "progress.json").is_file() and (ws / "model.safetensors").is_file()
