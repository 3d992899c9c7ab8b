"""Training: an optimizer step, full-state resume, two CPU processes, the loss terms."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, micro_options
from core.datasets.synthetic import SyntheticDataset
from core.models import LGM
from core.training import EMA, collate

# main.py arguments that make the cpu preset tiny enough for tests
MICRO_CLI = [
    "cpu", "--input_size", "32", "--down_channels", "32", "64", "--down_attention", "False", "True",
    "--up_channels", "64", "--up_attention", "True", "--attention_heads", "4", "--splat_size", "16",
    "--output_size", "32", "--num_views", "5", "--batch_size", "2", "--num_train_objects", "8",
    "--num_eval_objects", "2", "--num_workers", "0", "--log_every", "1", "--image_every", "2",
    "--warmup_steps", "2", "--lr", "1e-3", "--prob_grid_distortion", "0.5", "--prob_cam_jitter", "0.5",
]


def run_main(args, tmp_path, launcher=None, timeout=600, expect_rc=0):
    cmd = (launcher or [sys.executable]) + [str(ROOT / "main.py")] + MICRO_CLI + args
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(workspace):
    rows = [json.loads(l) for l in (workspace / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_one_step_changes_weights_and_lowers_loss():
    torch.manual_seed(0)
    opt = micro_options(num_views=5)
    model = LGM(opt)
    batch = collate([SyntheticDataset(opt, "train")[i] for i in range(2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = model(batch)["loss"]
    loss0.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        loss1 = model(batch)["loss"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert loss1 < loss0


def test_loss_is_mse_of_rgb_and_alpha(micro_opt):
    opt = micro_options(num_views=5)
    model = LGM(opt)
    batch = collate([SyntheticDataset(opt, "train")[0]])
    with torch.no_grad():
        out = model(batch)
    expected = ((out["images_pred"] - batch["images_output"]) ** 2).mean() + (
        (out["alphas_pred"] - batch["masks_output"]) ** 2
    ).mean()
    assert torch.allclose(out["loss"], expected, atol=1e-7)
    assert torch.allclose(out["psnr"], -10 * torch.log10(((out["images_pred"] - batch["images_output"]) ** 2).mean()))


def test_lpips_term_uses_the_lpips_network():
    opt = micro_options(num_views=5, lambda_lpips=0.5)
    model = LGM(opt, lpips_pretrained=False)  # random backbone: no download in tests
    batch = collate([SyntheticDataset(opt, "train")[0]])
    with torch.no_grad():
        out = model(batch)
        ref = model.lpips(out["images_pred"][0] * 2 - 1, batch["images_output"][0] * 2 - 1).mean()
    assert torch.allclose(out["loss_lpips"], ref, atol=1e-6)
    assert torch.allclose(out["loss"], out["loss_mse"] + 0.5 * ref, atol=1e-6)


def test_ema_update():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 0.1)
    with ema.applied_to(model):
        assert torch.allclose(model.weight, start + 0.1)
    assert torch.allclose(model.weight, start + 1.0)


def test_resume_from_checkpoint_continues_the_same_loss_curve(tmp_path):
    full = tmp_path / "full"
    run_main(["--workspace", str(full), "--max_steps", "6", "--save_every", "3", "--ema_decay", "0.9"], tmp_path)
    ckpt = full / "checkpoints" / "step_3"
    assert (ckpt / "progress.json").is_file() and (full / "model.safetensors").is_file()
    assert (full / "model_ema.safetensors").is_file() and (full / "metrics.jsonl").is_file()
    assert list((full / "images").glob("*.jpg"))

    resumed = tmp_path / "resumed"
    run_main(["--workspace", str(resumed), "--max_steps", "6", "--save_every", "3", "--ema_decay", "0.9",
              "--resume_from", str(ckpt)], tmp_path)
    a, b = losses(full), losses(resumed)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])

    # --resume_from latest picks the newest complete checkpoint of the workspace
    proc = run_main(
        ["--workspace", str(full), "--max_steps", "7", "--save_every", "3", "--ema_decay", "0.9", "--resume_from", "latest"],
        tmp_path,
    )
    assert "continuing at step 6" in proc.stdout + proc.stderr


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "acc_configs" / "cpu2.yaml")]
    proc = run_main(["--workspace", str(tmp_path / "ws"), "--max_steps", "3"], tmp_path, launcher=launcher)
    out = proc.stdout + proc.stderr
    assert "2 process(es)" in out
    assert "identical weights on 2 processes" in out


def test_non_finite_losses_are_skipped_then_abort(tmp_path):
    # lr 1e30: the first update blows the weights up, every later loss is NaN
    proc = run_main(["--workspace", str(tmp_path / "ws"), "--max_steps", "20", "--lr", "1e30"], tmp_path, expect_rc=3)
    out = proc.stdout + proc.stderr
    assert "non-finite loss" in out and "step skipped" in out
    assert "5 non-finite losses in a row" in out
    assert "Traceback" not in out
