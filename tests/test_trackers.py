"""--report_to: TensorBoard (the default), W&B (offline without network or login, never waiting on
the network), both, or none; the jsonl logs are written whatever is chosen."""

import os

import pytest

from test_training import run_main


def test_no_tracker_still_writes_the_jsonl_logs(tmp_path):
    ws = tmp_path / "ws"
    run_main(["--workspace", str(ws), "--max_steps", "2", "--report_to", "none"], tmp_path)
    assert not (ws / "tb").exists() and not (ws / "wandb").exists()
    assert (ws / "train_log.jsonl").is_file() and (ws / "metrics.jsonl").is_file()


def test_wandb_offline_writes_a_local_run_with_scalars_and_images(tmp_path):
    pytest.importorskip("wandb")
    ws = tmp_path / "ws"
    # the tests' environment is offline (LGM_OFFLINE=1, conftest): W&B must not try the network
    assert os.environ.get("LGM_OFFLINE") == "1"
    proc = run_main(["--workspace", str(ws), "--max_steps", "2", "--image_every", "2", "--report_to", "all"], tmp_path,
                    timeout=300)
    out = proc.stdout + proc.stderr
    assert "[wandb] offline (offline mode is set" in out and "wandb sync" in out
    runs = list((ws / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((ws / "wandb").iterdir()) if (ws / "wandb").is_dir() else out[-2000:]
    assert list(runs[0].glob("*.wandb"))  # the run's records, ready for `wandb sync`
    assert list(runs[0].rglob("media/images/train/inputs_gt_pred_*.png"))  # the image grid went to W&B too
    assert list((ws / "tb").glob("events.out.tfevents.*"))  # and TensorBoard still writes
