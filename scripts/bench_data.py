"""Data throughput: samples per second from a folder of renders vs the same objects in tar shards.

    python scripts/bench_data.py                       # 64 objects, 12 views of 256 px, 2 workers
    python scripts/bench_data.py --objects 200 --size 512 --workers 8 --keep /tmp/bench_data

Writes a folder dataset (objects from the synthetic generator, rendered once, saved as RGBA PNG
with pose files, as scripts/render_blender.py lays them out), converts it to shards, then times
full epochs of the training DataLoader (same batch size, workers and sample building) over each.
Both read from the local disk (page cache after the first pass); the first epoch of each is
discarded as warm-up. Samples are built at --input-size / --output-size like a training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--objects", type=int, default=64, help="objects in the folder dataset")
    p.add_argument("--views", type=int, default=12, help="views per object on disk")
    p.add_argument("--size", type=int, default=256, help="side of the rendered PNGs")
    p.add_argument("--input-size", type=int, default=64, help="Options.input_size of the samples")
    p.add_argument("--output-size", type=int, default=128, help="Options.output_size of the samples")
    p.add_argument("--num-views", type=int, default=8, help="views per sample (Options.num_views)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per dataset (after one warm-up epoch)")
    p.add_argument("--samples-per-shard", type=int, default=16)
    p.add_argument("--keep", default=None, help="folder for the data (kept; reused when present); default: a temporary one")
    return p


def write_folder(root: Path, n: int, views: int, size: int) -> None:
    import numpy as np

    from core.cameras import opengl_to_blender, orbit_camera
    from core.datasets.synthetic import render_object, sample_object
    from core.images import write_image

    import torch

    for i in range(n):
        obj = root / f"obj_{i:05d}"
        if (obj / "pose" / f"{views - 1:03d}.txt").is_file():
            continue
        g = torch.Generator().manual_seed(i)
        spec = sample_object(g, 0.6)
        azim = torch.cat([torch.tensor([0.0, 90.0, 180.0, 270.0]), torch.rand(max(views - 4, 0), generator=g) * 360])[:views]
        elev = torch.cat([torch.zeros(4), torch.rand(max(views - 4, 0), generator=g) * 60 - 30])[:views]
        c2w = orbit_camera(elev, azim, 1.5)  # [V, 4, 4] OpenGL, our world
        rgba = render_object(spec, c2w, size, 49.1)  # [V, 4, S, S]
        for v in range(views):
            write_image(obj / "rgb" / f"{v:03d}.png", rgba[v].permute(1, 2, 0))
            (obj / "pose").mkdir(parents=True, exist_ok=True)
            np.savetxt(obj / "pose" / f"{v:03d}.txt", opengl_to_blender(c2w[v]).numpy().reshape(1, 16))


def time_epochs(dataset, opt, epochs: int) -> float:
    from torch.utils.data import DataLoader, IterableDataset

    from core.training import EpochSampler, collate

    if isinstance(dataset, IterableDataset):
        loader = DataLoader(dataset, batch_size=opt.batch_size, num_workers=opt.num_workers, drop_last=True, collate_fn=collate)
    else:
        loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=EpochSampler(len(dataset), 0),
                            num_workers=opt.num_workers, drop_last=True, collate_fn=collate)
    n, t = 0, 0.0
    for epoch in range(epochs + 1):
        dataset.set_epoch(epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        count = sum(len(batch["uid"]) for batch in loader)
        if epoch > 0:  # the first epoch warms caches and starts workers
            n, t = n + count, t + time.perf_counter() - t0
    return n / t


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from core.datasets.folder import FolderDataset
    from core.datasets.shards import ShardsDataset, write_shards
    from core.options import config_defaults, replace

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        t0 = time.time()
        write_folder(work / "folder", args.objects, args.views, args.size)
        print(f"[bench] folder dataset: {args.objects} objects x {args.views} views of {args.size} px ({time.time() - t0:.0f} s to make)")
        opt = replace(
            config_defaults["small"], dataset="folder", data_root=str(work / "folder"), input_size=args.input_size,
            output_size=args.output_size, splat_size=args.input_size // 4, down_channels=(64, 128, 256),
            down_attention=(False, False, True), up_channels=(256,), up_attention=(True,), num_views=args.num_views,
            batch_size=args.batch_size, num_workers=args.workers, num_eval_objects=0, lambda_lpips=0.0,
        )
        folder = FolderDataset(opt, "train")
        if not (work / "shards" / "shards.index.json").is_file():
            write_shards(folder, None, work / "shards", samples_per_shard=args.samples_per_shard, log=None)
        shards = ShardsDataset(dataclasses.replace(opt, dataset="shards", data_root=str(work / "shards")))
        rates = {"folder": time_epochs(folder, opt, args.epochs), "shards": time_epochs(shards, opt, args.epochs)}
        size_mb = sum(p.stat().st_size for p in (work / "shards").glob("*.tar")) / 1e6
        print(f"[bench] samples of {args.num_views} views, input {args.input_size} px, output {args.output_size} px; "
              f"batch {args.batch_size}, {args.workers} worker(s); shards: {size_mb:.1f} MB")
        for name, rate in rates.items():
            print(f"{name:>7}: {rate:7.1f} samples/s")
        print(f" ratio : {rates['shards'] / rates['folder']:.2f} (shards / folder)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
