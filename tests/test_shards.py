"""Tar shards: a dataset converted to shards gives the same samples, bit for bit; several
processes x DataLoader workers read every object exactly once per epoch, in step."""

import dataclasses
import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import ROOT, micro_options
from core.datasets.folder import FolderDataset
from core.datasets.shards import ShardsDataset, ShardsError, ShardsEvalDataset, epoch_plan, resolve_shards, write_shards
from core.datasets.synthetic import SyntheticDataset
from core.training import collate
from test_folder_dataset import write_object

TENSOR_KEYS = ("input", "images_output", "masks_output", "cam_view", "cam_view_proj", "cam_pos")


def assert_same_item(a: dict, b: dict):
    assert a["uid"] == b["uid"]
    for key in TENSOR_KEYS:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (a["uid"], key)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "renders"
    for i in range(7):
        write_object(root, f"obj_{i}", n_views=7)
    (root / "obj_2" / "rgb" / "006.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # a bad supervision view
    (root / "obj_3" / "pose" / "005.txt").unlink()  # a view without a pose
    return root


def folder_options(root, **kw):
    base = dict(data_root=str(root), num_views=6, num_eval_objects=2, batch_size=1, prob_grid_distortion=1.0, prob_cam_jitter=1.0)
    base.update(kw)
    return micro_options(**base)


def test_folder_and_its_shards_give_identical_samples(folder, tmp_path):
    opt = folder_options(folder)
    train, evals = FolderDataset(opt, "train"), FolderDataset(opt, "eval")
    index = write_shards(train, evals, tmp_path / "shards", samples_per_shard=2, seed=1, log=None)
    assert [c for _, c in index["train"]] == [2, 2, 1] and [c for _, c in index["eval"]] == [2]
    sopt = dataclasses.replace(opt, dataset="shards", data_root=str(tmp_path / "shards" / "shards-{000000..000002}.tar"))
    shards = ShardsDataset(sopt)
    uids = [r.uid for r in train.records]
    for epoch in (0, 1):  # view choice and augmentations change with the epoch, the same way in both
        shards.set_epoch(epoch)
        train.set_epoch(epoch)
        got = list(shards)
        assert sorted(g["uid"] for g in got) == sorted(uids)  # each object once
        for item in got:
            assert_same_item(item, train[uids.index(item["uid"])])
    held_out = ShardsEvalDataset(sopt)
    assert len(held_out) == 2
    for i in range(2):
        assert_same_item(held_out[i], evals[i])
    # the folder's shard pattern or the folder itself name the same shards
    by_dir = dataclasses.replace(sopt, data_root=str(tmp_path / "shards"))
    assert [s.count for s in resolve_shards(by_dir.data_root)[0]] == [2, 2, 1]


def synthetic_shards(tmp_path, n_train, per_shard, **kw):
    opt = micro_options(num_views=5, num_train_objects=n_train, num_eval_objects=1, **kw)
    write_shards(SyntheticDataset(opt, "train"), SyntheticDataset(opt, "eval"), tmp_path / "syn", samples_per_shard=per_shard, log=None)
    return dataclasses.replace(opt, dataset="shards", data_root=str(tmp_path / "syn"))


def test_synthetic_shards_give_identical_samples(tmp_path):
    sopt = synthetic_shards(tmp_path, 3, 2, batch_size=1, prob_grid_distortion=1.0, prob_cam_jitter=1.0)
    source = SyntheticDataset(dataclasses.replace(sopt, dataset="synthetic"), "train")
    shards = ShardsDataset(sopt)
    shards.set_epoch(2)
    source.set_epoch(2)
    for item in shards:
        assert_same_item(item, source[int(item["uid"].rsplit("-", 1)[1])])


def test_no_eval_objects_means_no_held_out_shard_samples(tmp_path):
    sopt = synthetic_shards(tmp_path, 3, 2)
    assert len(ShardsEvalDataset(sopt)) == 1
    assert len(ShardsEvalDataset(dataclasses.replace(sopt, num_eval_objects=0))) == 0  # was: 1 all the same


def test_two_processes_two_workers_read_each_object_once_per_epoch(tmp_path):
    # 16 objects in shards of 3 (the last holds 1): 2 processes x 2 workers x batch 2 -> 4 per reader
    sopt = synthetic_shards(tmp_path, 16, 3, batch_size=2, num_workers=2, shuffle_buffer=2)
    seen_by_epoch = []
    for epoch in (0, 1):
        seen, batches = [], []
        for rank in (0, 1):
            ds = ShardsDataset(sopt, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            loader = DataLoader(ds, batch_size=2, num_workers=2, drop_last=True, collate_fn=collate)
            uids = [u for batch in loader for u in batch["uid"]]
            batches.append(len(uids) // 2)
            assert len(loader) == len(uids) // 2  # the length the training loop plans with
            seen += uids
        assert batches[0] == batches[1] == 4  # both processes step together
        assert sorted(seen) == [f"synthetic-train-{i:06d}" for i in range(16)]  # every object exactly once
        seen_by_epoch.append(seen)
    assert seen_by_epoch[0] != seen_by_epoch[1]  # a new order every epoch


def test_epoch_plan_slices_and_balances():
    counts = [5, 5, 5, 2]
    for slots, batch in ((2, 2), (3, 1), (4, 2)):
        plans, q = epoch_plan(counts, seed=0, epoch=3, slots=slots, batch_size=batch)
        assert q == sum(counts) // (slots * batch) * batch
        positions = [(s, k) for plan in plans for s, a, b in plan for k in range(a, b)]
        assert all(sum(b - a for _, a, b in plan) == q for plan in plans)
        assert len(positions) == len(set(positions)) == slots * q  # no object twice, as many as fit
    assert epoch_plan(counts, 0, 0, 2, 2) == epoch_plan(counts, 0, 0, 2, 2)  # deterministic (resume relies on it)


def test_a_corrupt_shard_keeps_the_count(tmp_path):
    sopt = synthetic_shards(tmp_path, 4, 2, batch_size=1)
    shard = tmp_path / "syn" / "shards-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])  # truncated: its samples are lost
    ds = ShardsDataset(sopt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(ds)
    assert len(items) == len(ds) == 4  # the reader repeats a good sample rather than fall out of step
    assert any("unusable" in str(w.message) or "repeating" in str(w.message) for w in caught)


def test_errors_are_clear(tmp_path):
    with pytest.raises(ShardsError, match="no \\*.index.json"):
        ShardsDataset(micro_options(dataset="shards", data_root=str(tmp_path)))
    with pytest.raises(ShardsError, match="shard not found"):
        ShardsDataset(micro_options(dataset="shards", data_root=str(tmp_path / "s-{000000..000001}.tar")))
    sopt = synthetic_shards(tmp_path, 2, 2, batch_size=2)
    with pytest.raises(ShardsError, match="fewer than one batch"):
        ShardsDataset(sopt, rank=0, world_size=2)


def test_converter_script(folder, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_shards.py"), "--output", str(out), "--samples-per-shard", "3",
         "cpu", "--dataset", "folder", "--data_root", str(folder), "--num_eval_objects", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--data_root '" in proc.stdout and "shards-{000000..000001}.tar" in proc.stdout
    index = json.loads((out / "shards.index.json").read_text())
    assert [c for _, c in index["train"]] == [3, 3] and [c for _, c in index["eval"]] == [1]


def test_gobjaverse_and_its_shards_give_identical_samples(tmp_path):
    from core.datasets.gobjaverse import GobjaverseDataset
    from test_gobjaverse import options as gobj_options, render_files, write_folder_object, write_tar_object

    files = render_files()
    write_folder_object(tmp_path / "g", "7/a", files)
    write_tar_object(tmp_path / "g", "7/b", files)
    opt = gobj_options(tmp_path / "g", num_eval_objects=0, batch_size=1, prob_grid_distortion=1.0, prob_cam_jitter=1.0)
    source = GobjaverseDataset(opt, "train")
    write_shards(source, None, tmp_path / "gs", samples_per_shard=1, log=None)
    shards = ShardsDataset(dataclasses.replace(opt, dataset="shards", data_root=str(tmp_path / "gs")))
    shards.set_epoch(4)
    source.set_epoch(4)
    got = list(shards)
    assert sorted(g["uid"] for g in got) == ["7/a", "7/b"]
    for item in got:
        assert_same_item(item, source[["7/a", "7/b"].index(item["uid"])])


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_with_the_same_batches(tmp_path):
    """The order of an epoch depends only on (seed, epoch, processes, workers, batch size), so
    --resume_from skips to the exact batch: the resumed loss curve is the uninterrupted one."""
    from test_training import losses, run_main

    data = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_shards.py"), "--output", str(tmp_path / "sh"), "--samples-per-shard", "4",
         "cpu", "--input_size", "32", "--output_size", "32", "--num_views", "5", "--num_train_objects", "12", "--num_eval_objects", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert data.returncode == 0, data.stdout + data.stderr
    args = ["--dataset", "shards", "--data_root", str(tmp_path / "sh"), "--num_workers", "2", "--max_steps", "5", "--save_every", "2"]
    run_main(args + ["--workspace", str(tmp_path / "full")], tmp_path)
    run_main(args + ["--workspace", str(tmp_path / "res"), "--resume_from", str(tmp_path / "full" / "checkpoints" / "step_2")], tmp_path)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "res")
    assert sorted(b) == [3, 4, 5] and all(a[s] == b[s] for s in (3, 4, 5)), (a, b)


def test_converter_counts_the_unreadable_views_it_copies(folder, tmp_path, capsys):
    """The folder holds a corrupt PNG (obj_2's view 006) and a view without a pose (obj_3's 005): the
    report and the index count the corrupt file as unreadable and name it; it is still copied as it is."""
    import importlib.util
    import tarfile

    spec = importlib.util.spec_from_file_location("make_shards_script", ROOT / "scripts" / "make_shards.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = ["cpu", "--dataset", "folder", "--data_root", str(folder), "--num_eval_objects", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dataset's own start-up warning about obj_3
        assert script.main(["--output", str(tmp_path / "out"), *data]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable image file(s) copied as they are" in out, out
    assert "obj_2/rgb/006.png" in out and "1 view(s) without a usable pose or file stored empty" in out
    index = json.loads((tmp_path / "out" / "shards.index.json").read_text())
    assert index["bad_views"] == 1 and index["unusable_views"] == 1 and index["images_checked"] is True
    assert "obj_2/rgb/006.png" in index["bad_view_examples"][0]
    uids, copied = [], None
    for name, _ in index["train"] + index["eval"]:
        with tarfile.open(tmp_path / "out" / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for member, content in files.items():
            if member.endswith(".meta.json"):
                uids.append(json.loads(content)["uid"])
                if uids[-1] == "obj_2":
                    copied = files[member.replace(".meta.json", ".006.png")]
    assert sorted(uids) == [f"obj_{i}" for i in range(7)]
    assert copied == (folder / "obj_2" / "rgb" / "006.png").read_bytes()  # copied byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert script.main(["--output", str(tmp_path / "fast"), "--no-check-images", *data]) == 0
    out = capsys.readouterr().out
    assert "image contents not checked (--no-check-images)" in out and "unreadable image file(s) copied" not in out
