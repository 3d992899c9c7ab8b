"""The asymmetric multi-view U-Net of LGM.

Four views are processed as a batch of images by ResNet blocks; at the coarse levels a
cross-view self-attention layer lets every pixel of every view attend to all pixels of all 4
views of the same object. Module names and shapes follow the published checkpoints
(listed in tests/fixtures/lgm_*_state_dict.txt; docs/design.md, "Weight compatibility").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

SKIP_SCALE = math.sqrt(0.5)


class MultiHeadAttention(nn.Module):
    """Self-attention over a token sequence with fused qkv (no bias) and an output projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape  # [B, N, C]
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, C/heads]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, C/heads]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MVAttention(nn.Module):
    """GroupNorm, then self-attention across all pixels of the ``num_views`` views, residual."""

    def __init__(self, dim: int, num_heads: int = 16, num_views: int = 4, skip_scale: float = SKIP_SCALE):
        super().__init__()
        self.num_views = num_views
        self.skip_scale = skip_scale
        self.norm = nn.GroupNorm(32, dim, eps=1e-5)
        self.attn = MultiHeadAttention(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        BV, C, H, W = x.shape  # [B*V, C, H, W]
        V = self.num_views
        h = self.norm(x)
        h = h.view(BV // V, V, C, H, W).permute(0, 1, 3, 4, 2).reshape(BV // V, V * H * W, C)  # [B, V*H*W, C]
        h = self.attn(h)
        h = h.view(BV // V, V, H, W, C).permute(0, 1, 4, 2, 3).reshape(BV, C, H, W)  # [B*V, C, H, W]
        return (h + x) * self.skip_scale


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a (1x1-projected) residual, scaled by ``skip_scale``."""

    def __init__(self, in_channels: int, out_channels: int, skip_scale: float = SKIP_SCALE):
        super().__init__()
        self.skip_scale = skip_scale
        self.norm1 = nn.GroupNorm(32, in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, out_channels, eps=1e-5)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * self.skip_scale


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_layers: int, downsample: bool, attention: bool, heads: int):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(num_layers)])
        self.attns = nn.ModuleList([MVAttention(cout, heads) for _ in range(num_layers)]) if attention else None
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns is not None:
                x = self.attns[i](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, heads: int):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels) for _ in range(2)])
        self.attns = nn.ModuleList([MVAttention(channels, heads)]) if attention else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.nets[0](x)
        if self.attns is not None:
            x = self.attns[0](x)
        return self.nets[1](x)


class UpBlock(nn.Module):
    """Consumes ``num_layers`` skip tensors (the last of them from the level below, ``cskip`` channels)."""

    def __init__(self, cin: int, cskip: int, cout: int, num_layers: int, upsample: bool, attention: bool, heads: int):
        super().__init__()
        self.nets = nn.ModuleList(
            [
                ResnetBlock((cin if i == 0 else cout) + (cskip if i == num_layers - 1 else cout), cout)
                for i in range(num_layers)
            ]
        )
        self.attns = nn.ModuleList([MVAttention(cout, heads) for _ in range(num_layers)]) if attention else None
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        # skips: the len(self.nets) most recent skip tensors, consumed last-in first-out
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, skips[-1 - i]], dim=1))
            if self.attns is not None:
                x = self.attns[i](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    """[B*4, in_channels, H, W] -> [B*4, out_channels, H * 2^(ups-1) / 2^(downs-1), ...]."""

    def __init__(
        self,
        in_channels: int = 9,
        out_channels: int = 14,
        down_channels: Sequence[int] = (64, 128, 256, 512, 1024, 1024),
        down_attention: Sequence[bool] = (False, False, False, True, True, True),
        mid_attention: bool = True,
        up_channels: Sequence[int] = (1024, 1024, 512, 256),
        up_attention: Sequence[bool] = (True, True, True, False),
        layers_per_block: int = 2,
        attention_heads: int = 16,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.conv_in = nn.Conv2d(in_channels, down_channels[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        cout = down_channels[0]
        for i, ch in enumerate(down_channels):
            cin, cout = cout, ch
            self.down_blocks.append(
                DownBlock(cin, cout, layers_per_block, i != len(down_channels) - 1, down_attention[i], attention_heads)
            )

        self.mid_block = MidBlock(down_channels[-1], mid_attention, attention_heads)

        self.up_blocks = nn.ModuleList()
        cout = up_channels[0]
        for i, ch in enumerate(up_channels):
            cin, cout = cout, ch
            cskip = down_channels[max(-2 - i, -len(down_channels))]
            self.up_blocks.append(
                UpBlock(cin, cskip, cout, layers_per_block + 1, i != len(up_channels) - 1, up_attention[i], attention_heads)
            )

        self.norm_out = nn.GroupNorm(32, up_channels[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(up_channels[-1], out_channels, 3, padding=1)

    def _run(self, fn, *args):
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # [B*V, C0, H, W]
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = self._run(block, x)
            skips.extend(block_skips)
        x = self._run(self.mid_block, x)
        for block in self.up_blocks:
            n = len(block.nets)
            level_skips = skips[-n:]
            del skips[-n:]
            x = self._run(block, x, level_skips)
        return self.conv_out(F.silu(self.norm_out(x)))  # [B*V, out, h, w]
