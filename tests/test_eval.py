"""scripts/eval.py on a small folder dataset: every row belongs to its own object, and objects that
cannot be evaluated are listed as skipped (no Blender needed; the render test lives in
test_render_blender.py)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, micro_options
from test_folder_dataset import write_object


@pytest.fixture
def eval_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "scripts" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "eval_script", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def micro_checkpoint(tmp_path, monkeypatch):
    from core.models import LGM
    from core.options import config_defaults

    opt = micro_options()
    monkeypatch.setitem(config_defaults, "micro", opt)
    torch.manual_seed(0)
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in LGM(opt).state_dict().items()}, str(path))
    return path


def test_rows_belong_to_their_objects_and_unusable_ones_are_skipped(tmp_path, eval_script, micro_checkpoint):
    data = tmp_path / "data"
    for uid in ("obj_a", "obj_b", "obj_c"):
        write_object(data, uid)
    (data / "obj_b" / "rgb" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # an input view

    def evaluate(data_list=None, output="out"):
        args = eval_script.EvalArgs(
            checkpoint=str(micro_checkpoint), data_root=str(data), preset="micro", lpips=False,
            output=str(tmp_path / output), device="cpu", data_list=data_list,
        )
        return eval_script.run(args)

    with pytest.warns(UserWarning, match="001.png"):
        summary = evaluate()
    assert [r["uid"] for r in summary["objects"]] == ["obj_a", "obj_c"]
    assert [s["uid"] for s in summary["skipped"]] == ["obj_b"] and "001.png" in summary["skipped"][0]["reason"]
    # the reference: each object evaluated on its own
    for row in summary["objects"]:
        (tmp_path / f"{row['uid']}.txt").write_text(row["uid"] + "\n")
        alone = evaluate(str(tmp_path / f"{row['uid']}.txt"), output=f"out_{row['uid']}")["objects"][0]
        assert alone["uid"] == row["uid"] and alone["psnr"] == pytest.approx(row["psnr"], abs=1e-6)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["skipped"] == summary["skipped"]
    assert "obj_b" in (tmp_path / "out" / "metrics.md").read_text()


def test_unwritable_output_is_a_clear_error(tmp_path, eval_script, micro_checkpoint, monkeypatch, capsys):
    data = tmp_path / "data"
    write_object(data, "obj_a")
    (tmp_path / "a_file").write_text("")
    argv = ["eval.py", "--checkpoint", str(micro_checkpoint), "--data-root", str(data), "--preset", "micro",
            "--no-lpips", "--output", str(tmp_path / "a_file")]
    monkeypatch.setattr(sys, "argv", argv)
    assert eval_script.main() == 2
    err = capsys.readouterr().err
    assert "--output" in err and "is a file" in err


def test_a_nan_pose_is_the_reason_given_for_its_skipped_object(tmp_path, eval_script, micro_checkpoint):
    """The skipped list names the cause the dataset's start-up warning knows: the pose file of input
    view 2 holds NaN (not just "missing or unusable")."""
    data = tmp_path / "data"
    for uid in ("obj_a", "obj_b"):
        write_object(data, uid)
    (data / "obj_b" / "pose" / "002.txt").write_text(" ".join(["nan"] + ["0"] * 15) + "\n")
    args = eval_script.EvalArgs(checkpoint=str(micro_checkpoint), data_root=str(data), preset="micro", lpips=False,
                                output=str(tmp_path / "out"), device="cpu")
    with pytest.warns(UserWarning, match="002.txt"):
        summary = eval_script.run(args)
    assert [r["uid"] for r in summary["objects"]] == ["obj_a"]
    (skipped,) = summary["skipped"]
    assert skipped["uid"] == "obj_b"
    assert "input view 2" in skipped["reason"] and "obj_b/pose/002.txt" in skipped["reason"]
    assert "NaN" in skipped["reason"]
    assert "NaN" in (tmp_path / "out" / "metrics.md").read_text()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped"] == summary["skipped"]


def test_options_it_cannot_use_are_one_screen_not_a_traceback(tmp_path, eval_script, micro_checkpoint, monkeypatch, capsys):
    """eval.py builds its Options inside the run: a wrong --input-view-ids used to end in a traceback."""
    data = tmp_path / "data"
    write_object(data, "obj_a")
    monkeypatch.setattr(sys, "argv", ["eval.py", "--checkpoint", str(micro_checkpoint), "--data-root", str(data),
                                      "--preset", "micro", "--input-view-ids", "0", "1", "--output", str(tmp_path / "out")])
    assert eval_script.main() == 2
    err = capsys.readouterr().err
    assert "eval.py: error:" in err and "input_view_ids" in err and "Traceback" not in err
