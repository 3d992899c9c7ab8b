"""Reading and loading weight files: the one place that touches checkpoints on disk.

- ``.safetensors`` (any dtype, e.g. the published fp16 files) are read with safetensors, their
  metadata (the options our training stores, :func:`read_metadata`) without the tensors;
- ``.pt`` / ``.pth`` / ``.bin`` only with ``torch.load(weights_only=True)`` (no pickled code);
- strict loading reports which preset a mismatching checkpoint seems to be (the model it loads
  into says, through its ``identify_preset``: this module knows no model);
- tolerant loading copies every tensor whose name and shape match and lists the rest.

Where files are looked up and whether they may be downloaded: :mod:`core.hub`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from core import hub
from core.errors import UserError

# where each published file comes from: used in error messages and by scripts/download_weights.py
DOWNLOAD_HINTS = {
    "model_fp16_fixrot.safetensors": "python scripts/download_weights.py --only lgm",
    "model_fp16.safetensors": "python scripts/download_weights.py --only lgm",
    "model.safetensors": "python scripts/download_weights.py --only lgm",
}


class WeightsError(UserError, RuntimeError):
    """A weight file that cannot be used; the message says what to do."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    pass


class WeightsMismatchError(WeightsError):
    pass


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, file shape, model shape)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, items in (
            ("shape mismatch (file vs model)", [f"{n}: {tuple(a)} vs {tuple(b)}" for n, a, b in self.mismatched]),
            ("missing in the file", self.missing),
            ("not used from the file", self.unexpected),
        ):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"    {x}" for x in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


def resolve_weights(path) -> Path:
    """The path of an existing weight file: as given, or by name inside ``pretrained/``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    found = None if p.is_absolute() else hub.find_pretrained(p.name)
    if found is not None:
        return found
    hint = DOWNLOAD_HINTS.get(p.name)
    how = f"Fetch it with `{hint}`" if hint else "Check the path"
    raise WeightsNotFoundError(
        f"Weight file not found: {p}\n{how}, or point to another file (e.g. --resume PATH).\n"
        f"Published LGM weights live in {hub.PRETRAINED_DIR}/ (see pretrained/README.md)."
    )


LGM_HUB_REPO = "ashawkey/LGM"
LGM_HUB_FILES = ("model_fp16_fixrot.safetensors", "model_fp16.safetensors", "model.safetensors")


def fetch_published_weights(path) -> Path:
    """The LGM checkpoint: the given path, pretrained/<name>, or (a published file name) the
    Hugging Face cache, downloading it there when the hub can be reached.
    Raises core.weights.WeightsNotFoundError."""
    try:
        return resolve_weights(path)
    except WeightsNotFoundError as missing:
        name = Path(path).name
        if name not in LGM_HUB_FILES:
            raise
        from huggingface_hub import hf_hub_download

        blocked = hub.download_blocker(hub.HF_HOST)
        try:
            if blocked is None:
                print(f"[weights] {path} not found: fetching {name} from the Hugging Face hub ({LGM_HUB_REPO})")
            return Path(hf_hub_download(LGM_HUB_REPO, name, local_files_only=blocked is not None))
        except Exception as e:
            why = f"{blocked}, and it is not in the Hugging Face cache" if blocked else f"download failed ({type(e).__name__})"
            raise WeightsNotFoundError(f"{missing}\n(Tried the hub repo {LGM_HUB_REPO}: {why}.)") from None


def read_state_dict(path) -> dict[str, Tensor]:
    """All tensors of a weight file on the CPU, in the dtype they were saved in."""
    p = resolve_weights(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        elif suffix in (".pt", ".pth", ".bin", ".ckpt"):
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"Unknown weight file type '{suffix}' for {p}: use .safetensors, .pt or .pth")
    except WeightsError:
        raise
    except Exception as e:  # corrupt file, pickled code refused by weights_only, ...
        raise WeightsError(f"Could not read weights from {p}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightsError(f"{p} does not hold a flat dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def compare_state_dict(model: nn.Module, sd: dict[str, Tensor]) -> LoadReport:
    own = model.state_dict()
    report = LoadReport()
    for name, t in sd.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(own[name].shape) != tuple(t.shape):
            report.mismatched.append((name, tuple(t.shape), tuple(own[name].shape)))
        else:
            report.loaded.append(name)
    report.missing = [n for n in own if n not in sd]
    return report


def read_shapes(path) -> dict[str, tuple]:
    """Tensor names and shapes of a .safetensors file, without reading the tensors."""
    from safetensors import safe_open

    p = resolve_weights(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise WeightsError(f"Could not read {p}: {type(e).__name__}: {e}") from e


def read_metadata(path) -> dict[str, str]:
    """The string metadata of a .safetensors file's header ({} for other files, or none stored)."""
    p = resolve_weights(path)
    if p.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise WeightsError(f"Could not read {p}: {type(e).__name__}: {e}") from e


def _mismatch_error(model: nn.Module, report: "LoadReport", shapes: dict, where: str, want: str, advice: str) -> WeightsMismatchError:
    identify = getattr(model, "identify_preset", None)  # the model knows its presets; this module does not
    seems = identify(shapes) if identify is not None else None
    seems_txt = f"it looks like preset '{seems}'" if seems else "it matches no known preset"
    return WeightsMismatchError(
        f"{where} does not fit the model{want}: {seems_txt}.\n"
        + report.summary(limit=5)
        + (f"\nUse the preset '{seems}'" if seems else "\nUse the preset it was trained with")
        + advice
    )


def check_shapes(model: nn.Module, path, what: str) -> None:
    """Raise :class:`WeightsMismatchError` (naming the preset the file looks like) unless the
    .safetensors file at ``path`` has exactly the model's tensor names and shapes."""
    shapes = read_shapes(path)
    report = compare_state_dict(model, {k: torch.empty(s, device="meta") for k, s in shapes.items()})
    if not report.complete:
        raise _mismatch_error(model, report, shapes, what, "", " with the same options it was trained with.")


def load_weights(model: nn.Module, path, strict: bool = True, preset: Optional[str] = None) -> LoadReport:
    """Load a weight file into ``model`` (values cast to the model's dtypes).

    strict: every tensor must match by name and shape, else :class:`WeightsMismatchError` naming
    the preset the file seems to be; otherwise copy what matches and return the report.
    """
    p = resolve_weights(path)
    sd = read_state_dict(p)
    report = compare_state_dict(model, sd)
    if strict and not report.complete:
        want = f" for preset '{preset}'" if preset else ""
        raise _mismatch_error(model, report, sd, f"Checkpoint {p}", want, ", or load tolerantly (training: --resume copies matching tensors only).")
    own = model.state_dict()
    with torch.no_grad():
        for name in report.loaded:
            own[name].copy_(sd[name].to(own[name].dtype))
    return report
