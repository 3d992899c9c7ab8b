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


# --------------------------------------------------------------------------- faults and bad input (issue 9)


def test_resume_never_unpickles_a_crafted_file(tmp_path):
    """A checkpoint folder holding pickles that would create a marker when loaded: resuming refuses
    them with a clear message and never runs them (custom_checkpoint_*.pkl, a crafted optimizer file)."""
    import pickle

    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2", "--save_every", "2", "--ema_decay", "0.9"], tmp_path)
    ckpt = ws / "checkpoints" / "step_2"
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (ckpt / name).write_bytes(pickle.dumps(Payload()))
    args = ["--workspace", str(ws), "--max_steps", "3", "--ema_decay", "0.9", "--resume_from", "latest"]
    proc = run_main(args, tmp_path, expect_rc=2)
    assert not marker.exists()
    assert "custom_checkpoint_0.pkl" in proc.stderr and "never loaded" in proc.stderr and "Traceback" not in proc.stderr
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (ckpt / name).unlink()  # as the message says
    proc = run_main(args, tmp_path)
    assert "continuing at step 2" in proc.stdout + proc.stderr

    ckpt3 = ws / "checkpoints" / "step_3"
    (ckpt3 / "optimizer.bin").write_bytes(pickle.dumps(Payload()))
    proc = run_main(["--workspace", str(ws), "--max_steps", "4", "--ema_decay", "0.9", "--resume_from", "latest"],
                    tmp_path, expect_rc=2)
    assert not marker.exists()
    err = proc.stderr
    assert "could not restore the training state" in err and "Traceback" not in err


def test_extending_a_run_replans_the_schedule(tmp_path):
    """Trained to step 4 of 4, resumed with --max_steps 8: no crash, and the learning rate of steps
    5-8 is that of a OneCycle schedule planned for 8 steps (stepped one by one in the test)."""
    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "4"], tmp_path)
    proc = run_main(["--workspace", str(ws), "--max_steps", "8", "--resume_from", "latest"], tmp_path)
    assert "re-planned for 8 steps (was 4)" in proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (ws / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=9, pct_start=2 / 9)
    expected = {}
    for step in range(1, 9):
        opt.step()
        sched.step()
        expected[step] = sched.get_last_lr()[0]
    for r in rows[4:]:
        assert r["lr"] == pytest.approx(expected[r["step"]], rel=1e-6)


def test_resumed_run_logs_each_step_once(tmp_path):
    """A run that got to step 6 and is resumed from its step-3 checkpoint (as after kill -9) replays
    steps 4-6: train_log.jsonl and TensorBoard hold each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "6", "--save_every", "3", "--eval_every", "3"], tmp_path)
    run_main(["--workspace", str(ws), "--max_steps", "6", "--save_every", "3", "--eval_every", "3",
              "--resume_from", str(ws / "checkpoints" / "step_3")], tmp_path)
    steps = [json.loads(line)["step"] for line in (ws / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    evals = [json.loads(line)["step"] for line in (ws / "metrics.jsonl").read_text().splitlines()]
    assert evals == [3, 6]
    acc = EventAccumulator(str(ws / "tb"), purge_orphaned_data=True)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_the_current_step(tmp_path):
    import signal
    import time

    ws = tmp_path / "ws"
    cmd = [sys.executable, str(ROOT / "main.py")] + MICRO_CLI + ["--workspace", str(ws), "--max_steps", "10000", "--save_every", "10000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = ws / "train_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    last = json.loads(log.read_text().splitlines()[-1])["step"]
    assert last >= 3 and "stopped by SIGTERM" in out and "Traceback" not in out
    assert (ws / "checkpoints" / f"step_{last}" / "progress.json").is_file()
    proc = run_main(["--workspace", str(ws), "--max_steps", str(last + 1), "--resume_from", "latest"], tmp_path)
    assert f"continuing at step {last}" in proc.stdout + proc.stderr


def test_full_disk_while_saving_keeps_the_last_checkpoint(tmp_path):
    """A file-size limit below the checkpoint's size makes the save of step 4 fail for real: a
    one-screen message names the intact step-2 checkpoint, from which the run then continues."""
    import resource
    import signal

    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2"], tmp_path)
    limit = (ws / "checkpoints" / "step_2" / "model.safetensors").stat().st_size // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, str(ROOT / "main.py")] + MICRO_CLI + ["--workspace", str(ws), "--max_steps", "4", "--resume_from", "latest"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "could not save the checkpoint of step 4" in proc.stderr and "step_2, is intact" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr[proc.stderr.index("error:"):].strip().splitlines()) < 10  # one screen
    assert sorted(p.name for p in (ws / "checkpoints").iterdir()) == ["step_2"]  # no half-written step_4
    proc = run_main(["--workspace", str(ws), "--max_steps", "3", "--resume_from", "latest"], tmp_path)
    assert "continuing at step 2" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "flags, words",
    [(["--lr", "-1e-3"], "--lr must be positive"), (["--batch_size", "0"], "--batch_size must be at least 1"),
     (["--max_steps", "-5"], "--max_steps must be at least 1")],
)
def test_invalid_numbers_are_refused_up_front(tmp_path, flags, words):
    proc = run_main(["--workspace", str(tmp_path / "ws")] + flags, tmp_path, expect_rc=2)
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_resume_from_another_preset_and_bad_workspace_are_clear_errors(tmp_path):
    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "1"], tmp_path)
    proc = run_main(["--workspace", str(ws), "--max_steps", "2", "--resume_from", "latest",
                     "--down_channels", "32", "32", "--up_channels", "32"], tmp_path, expect_rc=2)
    assert "does not fit the model" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "a_file").write_text("")
    proc = run_main(["--workspace", str(tmp_path / "a_file"), "--max_steps", "1"], tmp_path, expect_rc=2)
    assert "--workspace" in proc.stderr and "is a file" in proc.stderr and "Traceback" not in proc.stderr


def test_exported_input_views_feed_infer(tmp_path, monkeypatch):
    """--export_objects writes <uid>_mv.png beside the .ply; infer.py --views on it with the trained
    weights reconstructs the same Gaussians (up to the 8-bit rounding of the views)."""
    import infer
    from core.gs import load_ply
    from core.options import config_defaults, replace

    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2", "--export_objects", "1", "--video_frames", "4"], tmp_path)
    views = sorted((ws / "export").glob("*_mv.png"))
    assert len(views) == 1
    uid = views[0].name[: -len("_mv.png")]
    assert {p.name for p in (ws / "export").iterdir()} >= {f"{uid}.ply", f"{uid}.mp4", f"{uid}.jpg", f"{uid}_mv.png"}
    micro = replace(config_defaults["cpu"], input_size=32, down_channels=(32, 64), down_attention=(False, True),
                    up_channels=(64,), up_attention=(True,), attention_heads=4, splat_size=16, output_size=32)
    monkeypatch.setitem(config_defaults, "micro_cli", micro)
    assert infer.main(["--views", str(views[0]), "--preset", "micro_cli", "--resume", str(ws / "model.safetensors"),
                       "--workspace", str(tmp_path / "inf"), "--video-frames", "0"]) == 0
    exported, again = load_ply(ws / "export" / f"{uid}.ply"), load_ply(tmp_path / "inf" / f"{uid}_mv.ply")
    assert exported.shape == again.shape
    assert (exported[:, :3] - again[:, :3]).abs().mean() < 0.02
    assert (exported[:, 11:] - again[:, 11:]).abs().mean() < 0.02


def test_trained_weights_carry_their_options(tmp_path, capsys):
    """model.safetensors stores the options that build its model: infer.py and eval.py load it
    without --preset (the micro model here is no preset at all), a --preset that builds another
    model is a clear error, and files without stored options (the published ones) are still
    recognised by their tensor shapes."""
    import infer
    from core.models import LGM, identify_preset, options_for_weights, state_dict_shapes
    from core.options import config_defaults
    from core.weights import WeightsMismatchError, read_metadata

    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "1", "--export_objects", "1", "--video_frames", "4"], tmp_path)
    meta = read_metadata(ws / "model.safetensors")
    assert meta["lgm.preset"] == "custom" and json.loads(meta["lgm.options"])["input_size"] == 32
    views = next((ws / "export").glob("*_mv.png"))
    assert infer.main(["--views", str(views), "--resume", str(ws / "model.safetensors"), "--workspace", str(tmp_path / "inf"),
                       "--video-frames", "0"]) == 0
    assert "LGM 'custom'" in capsys.readouterr().out
    assert infer.main(["--views", str(views), "--preset", "cpu", "--resume", str(ws / "model.safetensors"),
                       "--workspace", str(tmp_path / "inf2"), "--video-frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "--preset cpu does not build the model of" in err and "input_size 32 (preset: 32)" not in err
    assert "down_channels [32, 64] (preset: [32, 64, 128])" in err and "Leave --preset out" in err

    # a file with no stored options: the preset its tensor shapes match (as the published 'big' files)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in LGM(config_defaults["cpu"]).state_dict().items()}, str(plain))
    opt, name = options_for_weights(plain)
    assert name == "cpu" and opt == config_defaults["cpu"]
    assert identify_preset(state_dict_shapes(config_defaults["big"])) == "big"
    try:
        options_for_weights(ws / "model.safetensors", preset="tiny")
    except WeightsMismatchError as e:
        assert "trained as 'custom'" in str(e)
    else:
        raise AssertionError("a conflicting preset was accepted")
