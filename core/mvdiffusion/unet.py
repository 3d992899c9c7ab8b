"""The multi-view latent-diffusion U-Net of MVDream and ImageDream, as a diffusers model.

An SD-2.1-style U-Net (ResBlocks with a timestep embedding, linear-projection spatial transformers)
with three additions:

- a camera embedding (a flattened 4x4 pose per view, see :func:`core.mvdiffusion.cameras`) added
  to the timestep embedding;
- self-attention that spans the views of one object jointly: the tokens of all F views are
  concatenated before ``attn1``, so every pixel attends to every pixel of every view;
- ImageDream's image prompt (``ip_dim > 0``): CLIP image features pass through a perceiver
  resampler (``image_embed``) to ``ip_dim`` tokens that every cross-attention reads with its own
  key/value projections (``to_k_ip``/``to_v_ip``), and the reference image's latent replaces the
  last of the F views (the caller passes F = 4 generated views + 1 reference view).

Module and parameter names equal those of the published diffusers-format checkpoints
(``ashawkey/mvdream-sd2.1-diffusers`` and ``ashawkey/imagedream-ipmv-diffusers``, folder ``unet``);
``tests/fixtures/*_unet_state_dict.txt`` lists every tensor.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

# ImageDream's resampler: fixed by the published architecture (not part of its config)
RESAMPLER_DEPTH = 4
RESAMPLER_HEADS = 12
RESAMPLER_DIM_HEAD = 64
RESAMPLER_FF_MULT = 4


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosines first (LDM convention).

    timesteps: [N] -> [N, dim]; entry k < dim/2 is cos(t * max_period^(-k / (dim/2))), entry
    dim/2 + k the matching sine; an odd ``dim`` gets a trailing zero.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )  # [half]
    args = timesteps.float()[:, None] * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (the LDM initialisation of residual output layers)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """[B, L, heads*d] -> [B, heads, L, d] (head-major split of the channel axis)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge_heads(t: Tensor) -> Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]"""
    return t.transpose(1, 2).flatten(2)


# --------------------------------------------------------------------------- building blocks


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected embedding, GroupNorm-SiLU-conv, with a skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: [N, C, h, w], emb: [N, E] -> [N, C_out, h, w]"""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Strided 3x3 convolution: [N, C, h, w] -> [N, C, h/2, w/2]"""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution: [N, C, h, w] -> [N, C, 2h, 2w]"""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Attention(nn.Module):
    """Multi-head (cross-)attention with bias-free q/k/v projections.

    With ``ip_dim > 0`` the last ``ip_dim`` context tokens are the image prompt: they are attended
    separately through ``to_k_ip``/``to_v_ip`` and the result is added with weight ``ip_weight``.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: Optional[int] = None,
        heads: int = 8,
        dim_head: int = 64,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.ip_dim = ip_dim
        self.ip_weight = ip_weight
        if ip_dim > 0:  # registered first: the published state dict lists them before to_q
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: [B, Lq, inner], k/v: [B, Lk, inner] -> [B, Lq, inner]"""
        h = self.heads
        out = F.scaled_dot_product_attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h))
        return _merge_heads(out)

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """x: [B, L, query_dim], context: [B, T (+ ip_dim), context_dim] or None (self-attention)."""
        context = x if context is None else context
        q = self.to_q(x)  # [B, L, inner]
        if self.ip_dim > 0:
            text, image = context[:, : -self.ip_dim], context[:, -self.ip_dim :]
            out = self._attend(q, self.to_k(text), self.to_v(text))
            out = out + self.ip_weight * self._attend(q, self.to_k_ip(image), self.to_v_ip(image))
        else:
            out = self._attend(q, self.to_k(context), self.to_v(context))
        return self.to_out(out)


class GEGLU(nn.Module):
    """Linear to 2*dim_out, then value * GELU(gate): [..., dim_in] -> [..., dim_out]"""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion: [..., dim] -> [..., dim]"""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiViewTransformerBlock(nn.Module):
    """Joint self-attention over all views, cross-attention to text (+ image prompt), feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        self.attn1 = Attention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, ip_dim=ip_dim, ip_weight=ip_weight)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:
        """x: [B*F, L, C] (F views of each object consecutive), context: [B*F, T, Cc] -> [B*F, L, C]"""
        n, length, c = x.shape
        joint = x.reshape(n // num_frames, num_frames * length, c)  # [B, F*L, C]: all views at once
        joint = self.attn1(self.norm1(joint)) + joint
        x = joint.reshape(n, length, c)  # [B*F, L, C]
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, linear projection in, transformer blocks over the h*w tokens, projection out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1, ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [MultiViewTransformerBlock(inner, heads, dim_head, context_dim, ip_dim, ip_weight) for _ in range(depth)]
        )
        self.proj_out = _zero(nn.Linear(inner, channels))

    def forward(self, x: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:
        """x: [B*F, C, h, w] -> [B*F, C, h, w]"""
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # [B*F, h*w, inner]
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        tokens = self.proj_out(tokens)  # [B*F, h*w, C]
        return tokens.transpose(1, 2).reshape(n, c, h, w) + x


class PerceiverAttention(nn.Module):
    """Latent queries attend to [image features, latents] (the IP-Adapter-plus resampler layer)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        """x: [B, N, dim] image features, latents: [B, Q, dim] -> [B, Q, dim]"""
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)  # [B, Q, inner]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, N+Q, inner] each
        h = self.heads
        out = F.scaled_dot_product_attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h))
        return self.to_out(_merge_heads(out))


class Resampler(nn.Module):
    """CLIP image features [B, N, embedding_dim] -> ``num_queries`` prompt tokens [B, Q, output_dim]."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int, ff_mult: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PerceiverAttention(dim, dim_head, heads),
                        nn.Sequential(
                            nn.LayerNorm(dim),
                            nn.Linear(dim, dim * ff_mult, bias=False),
                            nn.GELU(),
                            nn.Linear(dim * ff_mult, dim, bias=False),
                        ),
                    ]
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, embedding_dim] -> [B, Q, output_dim]"""
        latents = self.latents.expand(x.shape[0], -1, -1)  # [B, Q, dim]
        x = self.proj_in(x)  # [B, N, dim]
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class CondSequential(nn.Sequential):
    """A Sequential that hands the embedding to ResBlocks and the context to transformers."""

    def forward(self, x: Tensor, emb: Tensor, context: Optional[Tensor], num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


# --------------------------------------------------------------------------- the model


class MultiViewUNetModel(ModelMixin, ConfigMixin):
    """MVDream / ImageDream multi-view U-Net (the class named in the published ``unet/config.json``).

    Config (as in the published checkpoints; ``tests/fixtures`` holds the full tensor lists):
        image_size: latent side the model was trained at (32 for 256 px views; informative only).
        in_channels / out_channels: latent channels (4).
        model_channels: width of the first level (320); the time embedding is 4x wider.
        attention_resolutions: downsampling factors (1, 2, 4, ...) whose blocks have transformers.
        num_res_blocks: ResBlocks per level.
        channel_mult: width multiplier per level.
        num_head_channels: channels per attention head (heads = width // num_head_channels).
        transformer_depth: transformer blocks per spatial transformer.
        context_dim: width of the text (and image prompt) tokens.
        camera_dim: length of the camera vector per view (16: a flattened 4x4 pose); None = none.
        ip_dim: ImageDream image-prompt tokens (0 = MVDream, 16 = ImageDream).
        ip_weight: weight of the image-prompt cross-attention.
        ip_embed_dim: width of the CLIP image features fed to the resampler (1280, ViT-H/14);
            not in the published config (fixed there), a knob for small test models.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_res_blocks: int = 2,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        camera_dim: Optional[int] = 16,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        ip_embed_dim: int = 1280,
    ):
        super().__init__()
        attention_resolutions = set(attention_resolutions)
        emb_dim = model_channels * 4

        def transformer(ch: int) -> SpatialTransformer:
            heads = ch // num_head_channels
            return SpatialTransformer(ch, heads, num_head_channels, context_dim, transformer_depth, ip_dim, ip_weight)

        if ip_dim > 0:  # registered first: the published state dict lists image_embed first
            self.image_embed = Resampler(
                dim=context_dim,
                depth=RESAMPLER_DEPTH,
                dim_head=RESAMPLER_DIM_HEAD,
                heads=RESAMPLER_HEADS,
                num_queries=ip_dim,
                embedding_dim=ip_embed_dim,
                output_dim=context_dim,
                ff_mult=RESAMPLER_FF_MULT,
            )
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # encoder: a stem conv, then per level num_res_blocks (ResBlock [+ transformer]) and a downsample
        self.input_blocks = nn.ModuleList([CondSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(CondSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(CondSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = CondSequential(ResBlock(ch, emb_dim), transformer(ch), ResBlock(ch, emb_dim))

        # decoder: per level num_res_blocks + 1 (ResBlock on [h, skip] [+ transformer]) and an upsample
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(CondSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(32, ch), nn.SiLU(), _zero(nn.Conv2d(model_channels, out_channels, 3, padding=1))
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        num_frames: int = 1,
        camera: Optional[Tensor] = None,
        ip: Optional[Tensor] = None,
        ip_img: Optional[Tensor] = None,
    ) -> Tensor:
        """Predict the noise of F views per object (the views of one object consecutive).

        x: [B*F, C_in, h, w] noisy latents; timesteps: [B*F]; context: [B*F, T, context_dim] text
        tokens; camera: [B*F, camera_dim]; ImageDream only: ip: [B*F, N, ip_embed_dim] CLIP image
        features, ip_img: [B, C_in, h, w] reference latent, written over the last view of each
        object (F counts it). x is not modified. -> [B*F, C_out, h, w]
        """
        if x.shape[0] % num_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))  # [B*F, E]
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(emb.dtype))
        if self.config.ip_dim > 0:
            if ip is None or ip_img is None:
                raise ValueError("an ImageDream U-Net (ip_dim > 0) needs the image prompt: pass ip and ip_img")
            context = torch.cat([context, self.image_embed(ip.to(x.dtype))], dim=1)  # [B*F, T + ip_dim, Cc]
            x = x.clone()
            x[num_frames - 1 :: num_frames] = ip_img.to(x.dtype)

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, num_frames)
        return self.out(h)
