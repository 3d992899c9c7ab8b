"""Run main.py with its datasets wrapped in recorders: every item a process loads is appended to
``$RECORD_DIR/rank<R>.jsonl`` as {split, index, epoch (the dataset's, when loaded)}. Used by
tests/test_distributed.py under ``accelerate launch`` (the real loop, the real loaders).

    RECORD_DIR=DIR accelerate launch --config_file acc_configs/cpu2.yaml tests/probes/record_data.py cpu ...
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import main  # noqa: E402
from core import training  # noqa: E402


class Recorder(torch.utils.data.Dataset):
    """A map-style dataset that logs each item it gives and forwards set_epoch."""

    def __init__(self, dataset, split: str, log: Path):
        self.dataset, self.split, self.log, self.epoch = dataset, split, log, None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        with self.log.open("a") as f:
            f.write(json.dumps({"split": self.split, "index": int(index), "epoch": self.epoch}) + "\n")
        return self.dataset[index]


def recorded_datasets(opt):
    train, evals = original(opt)
    log = Path(os.environ["RECORD_DIR"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    return Recorder(train, "train", log), Recorder(evals, "eval", log)


original = training.build_datasets
training.build_datasets = recorded_datasets

if __name__ == "__main__":
    sys.exit(main.main())
