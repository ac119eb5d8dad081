"""SAM-Med2D's image encoder: SAM ViT-B at 256 x 256 input with an adapter in every block.

Facts (SAM-Med2D, Cheng et al. 2023, repository OpenGVLab/SAM-Med2D: ``build_sam_vit_b`` with
``image_size=256``, ``encoder_adapter=True``, and its ``image_encoder.py``; read, not copied):

- the ViT-B of SAM (embed 768, depth 12, 12 heads, window 14, global attention in blocks
  2, 5, 8, 11, relative positions) built for 256 x 256 input: 16 x 16 tokens, so
  ``pos_embed`` is ``(1, 16, 16, 768)`` and the global blocks' ``rel_pos_h/w`` ``(31, 64)``;
- each block owns an ``Adapter`` (module name as published) applied to the block's second
  LayerNorm output beside the MLP: ``x = x + mlp(norm2(x)) + Adapter(norm2(x))``;
- the adapter: a channel gate (global average pool, ``Linear(768, 192)`` no bias, ReLU,
  ``Linear(192, 768)`` no bias, sigmoid) multiplies the input; a spatial branch (3x3 stride-2
  conv, ReLU, 4x4 stride-2 transposed conv, ReLU; no biases) of the gated map is added to the
  input; a LayerNorm (eps 1e-5) ends it. Keys ``blocks.N.Adapter.{channel.0, channel.2,
  spatial.0, spatial.2, norm}``.

The transformer blocks themselves are segment-anything's (``Block``); :class:`AdapterBlock`
takes over their submodules so the keys stay ``blocks.N.norm1``, ``blocks.N.attn`` ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._sam_import import sam_module


class SpatialChannelAdapter(nn.Module):
    """SAM-Med2D's adapter: ``(B, H, W, C)`` -> ``(B, H, W, C)`` (H, W even)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        gate = self.channel(maps.mean(dim=(2, 3)))[:, :, None, None]
        maps = maps + self.spatial(maps * gate)
        return self.norm(maps.permute(0, 2, 3, 1))


class AdapterBlock(nn.Module):
    """A segment-anything ViT ``Block`` with SAM-Med2D's adapter: ``(B, H, W, C)`` -> same."""

    def __init__(self, block: Any, dim: int) -> None:
        super().__init__()
        self.norm1: nn.Module = block.norm1
        self.attn: nn.Module = block.attn
        self.norm2: nn.Module = block.norm2
        self.mlp: nn.Module = block.mlp
        self.window_size = int(block.window_size)
        self.Adapter = SpatialChannelAdapter(dim)  # the published key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoder = sam_module("image_encoder")
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            windows, pad_hw = encoder.window_partition(x, self.window_size)
            x = encoder.window_unpartition(self.attn(windows), self.window_size, pad_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.Adapter(normed)


def sam_med2d_encoder(img_size: int = 256) -> nn.Module:
    """SAM-Med2D's ViT-B image encoder: ``(B, 3, S, S)`` -> ``(B, 256, S/16, S/16)``."""
    encoder = sam_module("image_encoder").ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=_layer_norm_eps6,
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
    )
    encoder.blocks = nn.ModuleList(AdapterBlock(b, 768) for b in encoder.blocks)
    result: nn.Module = encoder
    return result


def _layer_norm_eps6(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


__all__ = ["AdapterBlock", "SpatialChannelAdapter", "sam_med2d_encoder"]
