"""Evaluate a checkpoint on a folder dataset: reconstruct each object from its 4 input views,
render its other views, and report PSNR, SSIM and LPIPS per object and on average.

    python scripts/eval.py --checkpoint workspace/model.safetensors --data-root data/ --output eval_out
    python scripts/eval.py --checkpoint pretrained/model_fp16_fixrot.safetensors --data-root data/ --grids

Writes <output>/metrics.json and <output>/metrics.md (and <output>/grids/<uid>.jpg with --grids).
Each row belongs to its object; objects that cannot be evaluated (an unreadable input view, a
broken pose) are listed as skipped with the cause (e.g. "input view 2 (obj/rgb/002.png): pose
obj/pose/002.txt: expected 16 finite numbers, found a NaN or infinite number"), never replaced by
another object.
The model's options come from the checkpoint (training stores them), or for the published files from
the preset their tensor shapes match, unless --preset is given.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP

import torch  # noqa: E402


@dataclass
class EvalArgs:
    checkpoint: str
    """LGM weights (.safetensors / .pt / .pth)."""
    data_root: str
    """Folder dataset root (<uid>/rgb + <uid>/pose, or <uid>/transforms.json)."""
    preset: Optional[str] = None
    """Model preset (default: the options stored in the checkpoint, or for the published files the preset their
    tensor shapes match)."""
    data_list: Optional[str] = None
    """Text file of uids to evaluate (default: uids.txt in data_root, else every sub-folder)."""
    input_view_ids: Optional[Tuple[int, ...]] = None
    """The 4 input views per object (default: the first 4)."""
    output: str = "eval_results"
    """Folder for metrics.json, metrics.md and grids."""
    lpips: bool = True
    """Compute LPIPS (needs the VGG16 backbone; reported as null when it is unavailable offline)."""
    grids: bool = False
    """Save an image per object: inputs | ground truth | prediction of the novel views."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""


def markdown_table(summary: dict) -> str:
    def fmt(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = ["| object | views | PSNR | SSIM | LPIPS | PSNR blank |", "|---|---:|---:|---:|---:|---:|"]
    for r in summary["objects"]:
        lines.append(
            f"| {r['uid']} | {r['num_views']} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 4)} | {fmt(r['lpips'], 4)} | "
            f"{fmt(r['psnr_blank'], 2)} |"
        )
    lines.append(
        f"| **mean ({summary['num_objects']})** | | **{fmt(summary['psnr'], 2)}** | **{fmt(summary['ssim'], 4)}** | "
        f"**{fmt(summary['lpips'], 4)}** | {fmt(summary['psnr_blank'], 2)} |"
    )
    if summary.get("skipped"):
        lines += ["", f"Skipped {len(summary['skipped'])} object(s) that could not be evaluated:", ""]
        lines += [f"- {s['uid']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines) + "\n"


def skip_reasons(dataset) -> list[dict]:
    """``dataset.skipped`` as report rows; the folder dataset's reasons already name each unusable
    input view and its cause (a pose file holding NaN, a missing image, a bad frame). Paths are
    made relative to the data root."""
    root = f"{Path(dataset.root)}/"
    return [{"uid": uid, "reason": why.removeprefix("skipped: ").replace(root, "")} for uid, why in dataset.skipped]


def run(args: EvalArgs) -> dict:
    from tqdm import tqdm

    from core import training as T
    from core.datasets.folder import FolderDataset
    from core.images import image_grid, write_image
    from core.models import LGM, options_for_weights
    from core.options import replace
    from core.outputs import prepare_output_dir
    from core.weights import load_weights, resolve_weights

    checkpoint = resolve_weights(args.checkpoint)
    model_opt, preset = options_for_weights(checkpoint, args.preset)
    opt = replace(
        model_opt, dataset="folder", data_root=args.data_root, data_list=args.data_list,
        input_view_ids=args.input_view_ids, renderer="auto",
    )
    out_dir = prepare_output_dir(args.output, "--output")
    dataset = FolderDataset(opt, "all", all_views=True)  # objects whose inputs cannot be read: dataset.skipped
    model = LGM(opt).to(args.device).eval()
    load_weights(model, checkpoint, strict=True, preset=preset)
    lpips_net = T.try_build_lpips(args.device) if args.lpips else None

    rows = []
    for i in tqdm(range(len(dataset)), desc="eval", unit="object"):
        data = T.collate([dataset[i]])
        data = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        metrics, pred = T.score_batch(model, data, opt, lpips_net)
        row = {"uid": data["uid"][0], "num_views": pred.shape[1], **T.metric_row(metrics[0])}
        rows.append(row)
        if args.grids:
            n_in = opt.num_input_views
            grid = image_grid([T.input_rgb(data["input"][0]), data["images_output"][0, n_in:], pred[0]])
            write_image(out_dir / "grids" / f"{row['uid']}.jpg", grid)
    summary = T.summarize(rows)
    summary.update(
        checkpoint=str(args.checkpoint), preset=preset, data_root=str(args.data_root),
        skipped=skip_reasons(dataset),
    )
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(summary))
    return summary


def main() -> int:
    import tyro

    from core import errors

    args = tyro.cli(EvalArgs, description=__doc__)

    def evaluate() -> int:
        summary = run(args)
        print(markdown_table(summary))
        print(f"wrote {Path(args.output) / 'metrics.json'} and {Path(args.output) / 'metrics.md'}")
        return 0

    return errors.run(evaluate, "eval.py")


if __name__ == "__main__":
    sys.exit(main())
