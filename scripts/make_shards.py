"""Convert a dataset (folder of renders, G-Objaverse, or the synthetic one) to webdataset tar shards.

    python scripts/make_shards.py --output shards/ small --dataset gobjaverse --data_root /data/gobjaverse \\
        --data_list gobjaverse_280k.json --num_eval_objects 64
    python main.py small --dataset shards --data_root 'shards/shards-{000000..000123}.tar'

Options after the converter's own (``--output``, ``--prefix``, ``--samples-per-shard``,
``--max-shard-mb``) are main.py's: a preset and the data options, which pick the objects and the
held-out split exactly as training would (``--num_eval_objects``; for the synthetic dataset also
``--num_train_objects`` and the image size and views it renders). Objects are stored as they are
(images byte for byte, cameras in our convention), so training from the shards gives the same
samples as training from the source. Training objects go in a random order (``--seed``) into
``<prefix>-NNNNNN.tar``, held-out ones into ``<prefix>-eval-NNNNNN.tar``; ``<prefix>.index.json``
records the count of each shard. Runs on disjoint ``--data_list`` parts with different
``--prefix`` values can write into one folder; train on all of them with ``--data_root DIR``.

Every image copied is decoded once with the readers' decoder, so the report counts the unreadable
ones truly (and names the first few); broken views are still copied as they are, so the shards give
what the source gives. ``--no-check-images`` skips the decoding (faster on very large datasets):
the report then says that image contents were not checked.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="make_shards.py --output DIR [converter options] PRESET [main.py data options]",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", "-o", required=True, help="folder for the shards and their index")
    p.add_argument("--prefix", default="shards", help="shard names: PREFIX-000000.tar, PREFIX-eval-000000.tar, PREFIX.index.json")
    p.add_argument("--samples-per-shard", type=int, default=256, help="objects per shard")
    p.add_argument("--max-shard-mb", type=float, default=1000.0, help="also close a shard at this size (MB)")
    p.add_argument("--no-check-images", dest="check_images", action="store_false",
                   help="copy image files without decoding them once: faster, but unreadable images are not counted")
    return p


def main(argv: list[str] | None = None) -> int:
    import tyro

    from core import errors
    from core.options import AllConfigs

    args, rest = build_parser().parse_known_args(argv)
    if not rest:
        build_parser().print_usage(sys.stderr)
        errors.show("give a preset and the data options, e.g. small --dataset folder --data_root data/renders", "make_shards.py")
        return 2
    opt = tyro.cli(AllConfigs, args=rest)  # bad options: tyro's one-screen message, exit code 2
    return errors.run(lambda: convert(args, opt), "make_shards.py")


def convert(args, opt) -> int:
    """Write the shards of ``opt``'s datasets as ``args`` say; errors are core.errors.UserError."""
    from core.datasets.common import DatasetError
    from core.datasets.shards import write_shards
    from core.training import build_datasets

    if opt.dataset == "shards":
        raise DatasetError("--dataset shards is already sharded; convert its source instead")
    t0 = time.time()
    train, evals = build_datasets(opt)
    print(f"[shards] {len(train)} training and {len(evals)} held-out objects of --dataset {opt.dataset} -> {args.output}")
    index = write_shards(train, evals, args.output, prefix=args.prefix, samples_per_shard=args.samples_per_shard,
                         max_shard_bytes=args.max_shard_mb * 1e6, seed=opt.seed, check_images=args.check_images)
    print(report(index, args, time.time() - t0))
    return 0


def report(index: dict, args, seconds: float) -> str:
    """The converter's closing lines: what was written, and the bad views as they were found."""
    n_train = sum(c for _, c in index["train"])
    last = len(index["train"]) - 1
    if index.get("images_checked", True):
        bad = f"{index['bad_views']} unreadable image file(s) copied as they are"
    else:
        bad = f"image contents not checked (--no-check-images), {index['bad_views']} file(s) unreadable from disk"
    lines = [
        f"[shards] {n_train} training objects in {len(index['train'])} shards, {sum(c for _, c in index['eval'])} held out "
        f"in {len(index['eval'])}; {bad}, {index.get('unusable_views', 0)} view(s) without a usable pose or file "
        f"stored empty, {index['skipped_objects']} objects skipped; {seconds:.1f} s"
    ]
    lines += [f"[shards]   unreadable: {e}" for e in index.get("bad_view_examples", [])]
    if index["bad_views"] > len(index.get("bad_view_examples", [])):
        lines.append(f"[shards]   ... and {index['bad_views'] - len(index['bad_view_examples'])} more")
    lines.append(f"train with: --dataset shards --data_root '{Path(args.output) / f'{args.prefix}-{{000000..{last:06d}}}.tar'}'")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
