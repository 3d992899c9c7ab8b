"""Tiny random MVDream / ImageDream pipelines for tests and offline smoke runs (CPU, seconds).

``save_tiny_pipeline(folder, imagedream=True)`` writes a complete diffusers folder (random
weights, a 40-token character tokenizer) that loads through :meth:`MVDreamPipeline.from_pretrained`
exactly like the published folders; its ``model_index.json`` names the U-Net library the way the
published ones do (``mv_unet``), which the loader must not need to import.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_UNET = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=16,
    transformer_depth=1,
    context_dim=32,
    camera_dim=16,
)
TINY_IMAGEDREAM = dict(ip_dim=4, ip_weight=1.0, ip_embed_dim=32)
TINY_MAX_LENGTH = 16


def write_tiny_clip_tokenizer_files(folder) -> tuple[Path, Path]:
    """A CLIP BPE vocabulary of single characters (lowercase letters, digits, a space-free set of
    punctuation, each also as word end ``</w>``) and no merges. -> (vocab.json, merges.txt)"""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ".,!?-'"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    merges.write_text("#version: 0.2\n")
    return vocab, merges


def build_tiny_pipeline(imagedream: bool = True, seed: int = 0, workdir=None):
    """An MVDreamPipeline of tiny random components (vae scale factor 8: 256 px views are 32x32 latents)."""
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    from core.mvdiffusion.pipeline import MVDreamPipeline
    from core.mvdiffusion.unet import MultiViewUNetModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_tiny_clip_tokenizer_files(workdir or tmp)
        tokenizer = CLIPTokenizer(
            str(vocab), str(merges), model_max_length=TINY_MAX_LENGTH, pad_token="<|endoftext|>"
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TINY_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    unet_cfg = dict(TINY_UNET, **(TINY_IMAGEDREAM if imagedream else {}))
    unet = MultiViewUNetModel(**unet_cfg)
    with torch.no_grad():  # the zero-initialised output layers would make every prediction 0
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    image_encoder = feature_extractor = None
    if imagedream:
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
            )
        )
        feature_extractor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
        )
    return MVDreamPipeline(
        vae=vae.eval(),
        unet=unet.eval(),
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        scheduler=scheduler,
        image_encoder=None if image_encoder is None else image_encoder.eval(),
        feature_extractor=feature_extractor,
    )


def save_tiny_pipeline(folder, imagedream: bool = True, seed: int = 0) -> Path:
    """Write a tiny random pipeline as a diffusers folder shaped like the published ones."""
    folder = Path(folder)
    pipe = build_tiny_pipeline(imagedream=imagedream, seed=seed)
    pipe.save_pretrained(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["unet"] = ["mv_unet", "MultiViewUNetModel"]  # as published: a module nobody can import
    index_path.write_text(json.dumps(index, indent=2))
    return folder
