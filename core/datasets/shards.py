"""Sharded streaming: objects of any dataset in webdataset tar shards, read once per epoch across
processes, nodes and DataLoader workers.

A shard holds whole objects as they are on disk (not finished samples), so view choice and
augmentations stay fresh every epoch and a sample read from shards equals, bit for bit, the
sample the source dataset gives for the same object, epoch and index. One object is one
webdataset sample (files sharing a key)::

    <key>.meta.json     {"format", "source": "folder"|"gobjaverse"|"synthetic", "uid", "index", ...}
    <key>.cams.npy      [N, 4, 4] float32 camera-to-world, OpenGL axes, our y-up world, unscaled
    <key>.fovs.npy      [N, 2] float32 fields of view (x, y) in degrees (G-Objaverse only)
    <key>.<view>.<ext>  the view's image file, byte for byte (folder: 000.png; G-Objaverse: 00012.png)
    <key>.rgba.npy      [N, 4, S, S] float32 rendered views (synthetic only)

``index`` is the object's position in its source split; it seeds the view choice and the
augmentations, as in the source dataset. Writing (``write_shards``, ``scripts/make_shards.py``)
puts training objects, in a seeded random order, into ``<prefix>-000000.tar``, ... and the
held-out objects into ``<prefix>-eval-000000.tar``, ..., and records the sample count of each
shard in ``<prefix>.index.json`` beside them.

Reading (``--dataset shards --data_root 'DIR/shards-{000000..000099}.tar'`` or ``DIR``): every
epoch, all processes shuffle the shard order the same way (seed, epoch) and lay the shards end to
end; the resulting sequence of N objects is cut into ``world_size x num_workers`` contiguous
slots of equal length q (a multiple of the batch size, ``q = N // (slots * batch) * batch``), slot
``rank * num_workers + worker`` going to that process's worker, which reads only the shards its
slot touches (skipping into the first and out of the last) and shuffles within a small buffer.
So every object is read at most once per epoch (exactly once when N is a multiple of
``slots x batch``; the few left over change every epoch), each process gets the same number of
batches (no process waits for another at the end of an epoch), and each shard is read by one
or two readers, not by all. A reader that comes up short (a corrupt sample) repeats its last
good sample so that its count holds. The order of an epoch depends only on (seed, epoch,
processes, workers, batch size), which is what lets ``--resume_from`` skip to the exact batch.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from core.datasets.common import DatasetError, sample_generator
from core.datasets.folder import FolderItems, ObjectRecord, View
from core.datasets.gobjaverse import GObject, GobjaverseItems, GView
from core.datasets.synthetic import SyntheticDataset
from core.images import ImageReadError, read_image
from core.options import Options

SHARD_FORMAT = 1
INDEX_SUFFIX = ".index.json"


class ShardsError(DatasetError):
    """Shards that cannot be used."""


# ---------------------------------------------------------------------------------- encoding
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


BAD_VIEW_EXAMPLES = 5  # unreadable views named in the index and the converter's report


def new_counts() -> dict:
    """What :func:`write_shards` counts: ``bad_views`` (image files copied that the readers cannot
    decode, or that could not be read from disk), ``unusable_views`` (views the source itself cannot
    use, a bad pose or a missing file: stored empty), ``skipped_objects``, and ``bad_view_examples``
    (the first few unreadable paths with the reason)."""
    return {"bad_views": 0, "unusable_views": 0, "skipped_objects": 0, "bad_view_examples": []}


def _bad_view(counts: dict, where: str, why: str) -> None:
    counts["bad_views"] += 1
    if len(counts["bad_view_examples"]) < BAD_VIEW_EXAMPLES:
        counts["bad_view_examples"].append(f"{where}: {why}")


def _check_image(data: bytes, name: str, where: str, counts: dict) -> None:
    """Count ``data`` as a bad view when the readers of the shards cannot decode it: the decoder the
    shards' readers use (read_image on bytes), so the count says what training will meet."""
    if not data:  # already counted as unreadable from disk
        return
    try:
        read_image(data, name)
    except Exception as e:  # ImageReadError, and whatever a broken file makes the decoder raise
        _bad_view(counts, where, str(e).split(": ", 1)[-1] if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}")


def object_sample(dataset, index: int, counts: dict, check_images: bool = True) -> Optional[dict]:
    """Object ``index`` of a dataset split (folder, G-Objaverse, synthetic: any dataset with a
    ``raw_object(index)``) as a shard sample.

    Image files are copied byte for byte (unreadable ones stay unreadable, so the shard gives the
    same samples as the source, bad views included); an object whose files cannot be opened at all
    is skipped (None), as the source would skip it. ``counts`` (see :func:`new_counts`) is updated;
    with ``check_images`` every copied image is decoded once, so that ``bad_views`` counts the
    unreadable ones (without, only files that cannot be read from disk).
    """
    if not hasattr(dataset, "raw_object"):
        raise ShardsError(f"cannot convert a {type(dataset).__name__} to shards (folder, gobjaverse or synthetic)")
    raw = dataset.raw_object(index)
    if raw is None:
        counts["skipped_objects"] += 1
        return None
    sample = {"__key__": f"{index:09d}"}
    sample.update((f"{name}.npy", _npy(array)) for name, array in raw.arrays.items())
    for f in raw.files:
        if f.unusable:
            counts["unusable_views"] += 1
        elif f.unreadable is not None:
            _bad_view(counts, f.where, f.unreadable)
        elif check_images:
            _check_image(f.data, f.name, f.where, counts)
        sample[f.name] = f.data
    meta = {"format": SHARD_FORMAT, "index": index, "split": dataset.split, **raw.meta}
    sample["meta.json"] = json.dumps(meta).encode()
    return sample


def write_shards(train, evals, out_dir, prefix: str = "shards", samples_per_shard: int = 256,
                 max_shard_bytes: float = 1e9, seed: int = 0, log=print, check_images: bool = True) -> dict:
    """Write the objects of two splits of a dataset to tar shards and ``<prefix>.index.json``.

    Training objects go in a random order (seeded) into ``<prefix>-NNNNNN.tar``, held-out objects
    in order into ``<prefix>-eval-NNNNNN.tar``; a shard is closed at ``samples_per_shard`` objects
    or ``max_shard_bytes``. Returns the index (also written to disk), with the counts of
    :func:`new_counts` and ``images_checked`` (``check_images``: every copied image decoded once).
    """
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = new_counts()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()

    def write(split_name: str, dataset, indices) -> list:
        shards, writer, n, size = [], None, 0, 0
        for index in indices:
            sample = object_sample(dataset, index, counts, check_images)
            if sample is None:
                continue
            nbytes = sum(len(v) for k, v in sample.items() if not k.startswith("__"))
            if writer is None or n >= samples_per_shard or (n > 0 and size + nbytes > max_shard_bytes):
                if writer is not None:
                    writer.close()
                name = f"{prefix}-{split_name}{len(shards):06d}.tar"
                writer = wds.TarWriter(str(out / name), mtime=0.0)  # fixed times: the same input gives the same bytes
                shards.append([name, 0])
                n, size = 0, 0
            writer.write(sample)
            n, size = n + 1, size + nbytes
            shards[-1][1] = n
            if log and sum(c for _, c in shards) % 1000 == 0:
                log(f"[shards] {split_name or 'train-'}{sum(c for _, c in shards)} objects")
        if writer is not None:
            writer.close()
        return shards

    index = {
        "format": SHARD_FORMAT,
        "source": type(train).__name__,
        "train": write("", train, order),
        "eval": write("eval-", evals, list(range(len(evals)))) if evals is not None else [],
        "bad_views": counts["bad_views"],
        "unusable_views": counts["unusable_views"],
        "skipped_objects": counts["skipped_objects"],
        "bad_view_examples": counts["bad_view_examples"],
        "images_checked": bool(check_images),
    }
    (out / f"{prefix}{INDEX_SUFFIX}").write_text(json.dumps(index, indent=1))
    return index


# ---------------------------------------------------------------------------------- shard lists
@dataclass
class ShardInfo:
    url: str
    count: int


def _load_indexes(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"*{INDEX_SUFFIX}")):
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"ignoring shard index {path}: {e}")
            continue
        index["_folder"] = path.parent
        out.append(index)
    return out


def _count_samples(url: str) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.tarfile_samples([{"url": url}]))


def resolve_shards(data_root: str) -> tuple[list[ShardInfo], list[ShardInfo]]:
    """(training shards, held-out shards) of ``--data_root``: a brace pattern or '::'-separated
    list of shard URLs (``DIR/shards-{000000..000099}.tar``), or a folder of shards with their
    ``*.index.json``. Counts come from the index files beside the shards; shards without one are
    counted by reading them (slow, with a warning)."""
    import webdataset as wds

    root = Path(str(data_root)).expanduser()
    if root.is_dir():
        indexes = _load_indexes(root)
        if not indexes:
            raise ShardsError(f"{root}: no *{INDEX_SUFFIX} here; write shards with scripts/make_shards.py or pass a shard pattern")
        train = [ShardInfo(str(ix["_folder"] / n), c) for ix in indexes for n, c in ix["train"]]
        evals = [ShardInfo(str(ix["_folder"] / n), c) for ix in indexes for n, c in ix.get("eval", [])]
        return train, evals
    urls = wds.shardlists.expand_urls(str(data_root))
    if not urls:
        raise ShardsError(f"--data_root {data_root!r} names no shard")
    known: dict[str, int] = {}
    eval_of: dict[str, list] = {}
    for folder in sorted({Path(u).parent for u in urls if "://" not in u and not u.startswith("pipe:")}):
        for ix in _load_indexes(folder):
            ev = [ShardInfo(str(folder / n), c) for n, c in ix.get("eval", [])]
            for n, c in ix["train"]:
                known[str(folder / n)] = c
                eval_of[str(folder / n)] = ev
    train = []
    for url in urls:
        key = str(Path(url)) if "://" not in url and not url.startswith("pipe:") else url
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise ShardsError(f"shard not found: {url} (from --data_root {data_root!r})")
        if key not in known:
            warnings.warn(f"{url}: no count in a *{INDEX_SUFFIX} beside it; counting its samples by reading it")
            known[key] = _count_samples(url)
        train.append(ShardInfo(url, known[key]))
    evals = eval_of.get(str(Path(urls[0])), [])
    return train, evals


def epoch_plan(counts: list[int], seed: int, epoch: int, slots: int, batch_size: int) -> tuple[list[list[tuple[int, int, int]]], int]:
    """Which part of which shard each reader slot reads in an epoch, and how many samples per slot.

    Shards are shuffled with (seed, epoch) and laid end to end; slot s reads positions
    [s q, (s + 1) q) of that sequence, q = N // (slots * batch_size) * batch_size. Returns
    ([[(shard index, first, end), ...] per slot], q), first/end counting samples within a shard.
    """
    order = torch.randperm(len(counts), generator=sample_generator(seed, epoch)).tolist()
    total = sum(counts)
    q = total // (slots * batch_size) * batch_size
    starts, pos = [], 0
    for s in order:
        starts.append(pos)
        pos += counts[s]
    plans = []
    for slot in range(slots):
        lo, hi, pieces = slot * q, (slot + 1) * q, []
        for s, start in zip(order, starts):
            a, b = max(lo, start), min(hi, start + counts[s])
            if a < b:
                pieces.append((s, a - start, b - start))
        plans.append(pieces)
    return plans, q


# ---------------------------------------------------------------------------------- samples
class SampleBuilder:
    """Shard sample -> training sample, with the source dataset's own rules (see module doc)."""

    def __init__(self, opt: Options, split: str):
        self.opt, self.split = opt, split
        self.folder = FolderItems(opt, split)
        self.gobjaverse = GobjaverseItems(opt, split)
        self.synthetic = SyntheticDataset(opt, split)
        self._warned = set()

    def set_epoch(self, epoch: int) -> None:
        self.folder.epoch = self.gobjaverse.epoch = int(epoch)
        self.synthetic.set_epoch(epoch)

    def build(self, sample: dict) -> Optional[dict]:
        meta = json.loads(sample["meta.json"])
        if meta.get("format") != SHARD_FORMAT:
            raise ShardsError(f"{sample.get('__url__')}: shard format {meta.get('format')}, this reader knows {SHARD_FORMAT}")
        cams = torch.from_numpy(_from_npy(sample["cams.npy"]).astype(np.float32))  # [N, 4, 4]
        source, uid, index = meta["source"], meta["uid"], int(meta["index"])
        if source == "folder":
            if uid not in self._warned:
                self._warned.add(uid)
                self.folder.check_fovy(uid, meta.get("fovy"))
            problems = meta.get("problems") or [None] * len(meta["images"])
            views = [View(sample[n.lower()], None if why else cams[k], why) for k, (n, why) in enumerate(zip(meta["images"], problems))]
            return self.folder.make(ObjectRecord(uid, views), index)
        if source == "gobjaverse":
            fovs = _from_npy(sample["fovs.npy"]).tolist()
            views = [GView(vid, cams[k], tuple(fovs[k]), sample[n.lower()]) for k, (vid, n) in enumerate(zip(meta["vids"], meta["images"]))]
            return self.gobjaverse.build(GObject(uid, views), index)
        if source == "synthetic":
            return self._synthetic(uid, index, torch.from_numpy(_from_npy(sample["rgba.npy"])), cams, meta)
        raise ShardsError(f"{sample.get('__url__')}: unknown source {source!r}")

    def _synthetic(self, uid: str, index: int, rgba: Tensor, c2w: Tensor, meta: dict) -> dict:
        """What SyntheticDataset.__getitem__ makes of its rendered views (same seeds, one thread)."""
        if rgba.shape[0] != self.opt.num_views or abs(meta.get("fovy", self.opt.fovy) - self.opt.fovy) > 1e-6:
            raise ShardsError(
                f"{uid}: synthetic shards hold {rgba.shape[0]} views at fovy {meta.get('fovy')}; this run wants "
                f"--num_views {self.opt.num_views} at --fovy {self.opt.fovy}: convert again with these options"
            )
        return self.synthetic.make(rgba, c2w, index, uid)


def _iter_shard(url: str, first: int, end: int) -> Iterator[dict]:
    """Samples [first, end) of one shard, read with webdataset (corrupt parts are warned about and skipped)."""
    import webdataset as wds

    samples = wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue)
    try:
        for k, sample in enumerate(samples):
            if k >= end:
                break
            if k >= first:
                yield sample
    finally:
        close = getattr(samples, "close", None)
        if close is not None:
            close()


def _shuffled(samples: Iterator[dict], size: int, g: torch.Generator) -> Iterator[dict]:
    """Shuffle a stream within a buffer of ``size`` samples (each sample still comes out once)."""
    if size <= 0:
        yield from samples
        return
    buf = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = int(torch.randint(len(buf), (1,), generator=g))
        buf[j], s = s, buf[j]
        yield s
    for j in torch.randperm(len(buf), generator=g).tolist():
        yield buf[j]


# ---------------------------------------------------------------------------------- datasets
class ShardsDataset(IterableDataset):
    """Training objects from tar shards (``--dataset shards``), split across processes and
    DataLoader workers (see the module doc). ``rank``/``world_size`` default to the torch.distributed
    group (or 0/1); the DataLoader must use ``opt.batch_size``, ``opt.num_workers`` and drop_last.
    ``len()`` is this process's samples per epoch. Call :meth:`set_epoch` every epoch."""

    def __init__(self, opt: Options, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.opt = opt  # Options checks that --dataset shards has a data_root
        self.shards, self.eval_shards = resolve_shards(opt.data_root)
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        self.num_workers = max(1, opt.num_workers)
        self.builder = SampleBuilder(opt, "train")
        self.epoch = 0
        self.num_samples = sum(s.count for s in self.shards)
        self.place(rank, world_size)

    def place(self, rank: int, world_size: int) -> None:
        """Read as process ``rank`` of ``world_size`` (before iterating; all processes must agree)."""
        self.rank, self.world_size = int(rank), int(world_size)
        if self.samples_per_slot() == 0:
            raise ShardsError(
                f"{self.num_samples} objects in {len(self.shards)} shards are fewer than one batch for every reader: "
                f"{self.world_size} process(es) x {self.num_workers} worker(s) x batch {self.opt.batch_size}; "
                f"lower --num_workers or --batch_size"
            )

    @property
    def split(self) -> str:
        return "train"

    @property
    def counts(self) -> dict:
        return {k: self.builder.folder.counts[k] + self.builder.gobjaverse.counts[k] for k in ("bad_views", "skipped_objects")}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.builder.set_epoch(epoch)

    def samples_per_slot(self) -> int:
        slots = self.world_size * self.num_workers
        return self.num_samples // (slots * self.opt.batch_size) * self.opt.batch_size

    def __len__(self) -> int:
        return self.num_workers * self.samples_per_slot()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_workers:
            raise ShardsError(f"ShardsDataset planned for {self.num_workers} DataLoader workers, runs in {workers}; build it with opt.num_workers")
        slot = self.rank * workers + worker
        plans, q = epoch_plan([s.count for s in self.shards], self.opt.seed, self.epoch, self.world_size * workers, self.opt.batch_size)
        raw = (s for shard, first, end in plans[slot] for s in _iter_shard(self.shards[shard].url, first, end))
        g = sample_generator(self.opt.seed, self.epoch, slot)
        made, last = 0, None
        for sample in _shuffled(raw, self.opt.shuffle_buffer, g):
            if made >= q:
                break
            try:
                item = self.builder.build(sample)
            except ShardsError:
                raise
            except Exception as e:  # a corrupt sample: warn, keep the count with a repeat below
                warnings.warn(f"{sample.get('__url__')} {sample.get('__key__')}: unusable sample ({type(e).__name__}: {e})")
                item = None
            if item is None:
                if last is None:
                    continue
                item = last
            made, last = made + 1, item
            yield item
        if made < q:
            if last is None:
                raise ShardsError(f"reader {slot} found no usable sample in its shards this epoch")
            warnings.warn(f"reader {slot}: {q - made} of {q} samples were unusable; repeating its last sample to keep processes in step")
            for _ in range(q - made):
                yield last


class ShardsEvalDataset(Dataset):
    """The held-out objects of shards (``<prefix>-eval-*.tar``), loaded into memory (a map-style
    dataset, so evaluation splits them across processes like any other). Without eval shards, the
    first ``num_eval_objects`` training objects are used, with a warning that they are not held out;
    ``num_eval_objects`` 0: none (evaluation is skipped)."""

    def __init__(self, opt: Options):
        self.builder = SampleBuilder(opt, "eval")
        self.samples = []
        if opt.num_eval_objects == 0:  # no evaluation: nothing to read
            return
        train, evals = resolve_shards(opt.data_root)
        samples = [s for info in evals for s in _iter_shard(info.url, 0, info.count)]
        if not samples:
            warnings.warn(f"no held-out shards for {opt.data_root}; evaluating on training objects")
            self.builder = SampleBuilder(opt, "train")  # their index is their training one
            samples = [s for info in train[:1] for s in _iter_shard(info.url, 0, max(1, opt.num_eval_objects))]
        self.samples = samples[: opt.num_eval_objects]

    @property
    def split(self) -> str:
        return "eval"

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        pass  # evaluation samples do not change

    def __getitem__(self, index: int) -> dict:
        item = self.builder.build(self.samples[index])
        if item is None:
            raise ShardsError(f"held-out object {json.loads(self.samples[index]['meta.json'])['uid']} has unreadable input views")
        return item
