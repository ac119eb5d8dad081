"""TinyViT-5M as the image encoder of MobileSAM and TinySAM, written here from the published facts.

Architecture (TinyViT, Wu et al. 2022, "5M" variant; as MobileSAM's ``build_sam_vit_t`` and
TinySAM's identical builder configure it: ``embed_dims (64, 128, 160, 320)``, ``depths
(2, 2, 6, 2)``, ``num_heads (2, 4, 5, 10)``, ``window_sizes (7, 7, 14, 7)``, MLP ratio 4, MBConv
expansion 4, 3x3 depthwise local convolutions, ``num_classes 1000``):

- ``patch_embed``: two 3x3 stride-2 conv+BN (3 -> 32 -> 64 channels, GELU between): S/4;
- ``layers.0``: two MBConv blocks (1x1 expand x4, 3x3 depthwise, 1x1 project, residual);
- ``layers.1..3``: windowed self-attention blocks (per-head learned bias over the window's
  (|dy|, |dx|) offsets), a depthwise 3x3 conv+BN ("local conv"), an MLP with a leading
  LayerNorm; each of ``layers.0..2`` ends with a patch-merging conv stack (1x1, 3x3 depthwise,
  1x1) to the next width, with stride 2, 2 and 1 (MobileSAM keeps the last stage at S/16);
- ``neck``: 1x1 conv 320 -> 256, LayerNorm2d, 3x3 conv, LayerNorm2d (no conv biases), as SAM's;
- ``norm_head`` / ``head``: the ImageNet classifier (LayerNorm, Linear 320 -> 1000). Unused by
  SAM, but in the published checkpoints (the builders load them strictly), so kept for the keys.

Submodule names follow the published state dicts (``patch_embed.seq.0.c.weight``,
``layers.1.blocks.0.attn.attention_biases``, ``...local_conv.bn.running_var``); the code is ours:
tensors move between stages as ``(B, C, H, W)`` and the resolution is taken from the input, so
any square input whose side is a multiple of 64 works (1024 gives the 64 x 64 embedding SAM's
decoder expects). Windows are zero-padded at the bottom/right and the padded tokens take part in
attention as keys, as upstream does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._sam_import import sam_module


@dataclass(frozen=True)
class TinyViTConfig:
    """Hyper-parameters of a TinyViT image encoder for SAM."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000
    out_chans: int = 256


TINYVIT_5M = TinyViTConfig()


class ConvBN(nn.Sequential):
    """``Conv2d`` without bias (child ``c``) followed by ``BatchNorm2d`` (child ``bn``)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, pad: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """``(B, 3, H, W)`` -> ``(B, dim, H/4, W/4)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), ConvBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: ``(B, C, H, W)`` -> same shape."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """``(B, dim, H, W)`` -> ``(B, out_dim, H/stride, W/stride)``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


def window_offset_index(window: int, device: torch.device | None = None) -> torch.Tensor:
    """``(w*w, w*w)`` index of each (query, key) pair's offset ``|dy| * w + |dx|`` in the bias
    table. Upstream numbers offsets by first appearance over row-major pairs; the first query
    (0, 0) meets every offset (dy, dx) in row-major order, so that numbering is this one."""
    coords = torch.arange(window, device=device)
    ys = coords.repeat_interleave(window)
    xs = coords.repeat(window)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class WindowAttention(nn.Module):
    """Attention over windows of tokens ``(N, w*w, C)`` with a learned offset bias per head."""

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # per head: [q | k | v], heads outermost
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", window_offset_index(window), persistent=False)

    @torch.no_grad()
    def reset_index(self) -> None:
        """Refill the (unsaved) offset index, e.g. after ``to_empty``."""
        self.attention_bias_idxs.copy_(window_offset_index(self.window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3, self.key_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (N, heads, L, key_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(n, length, -1))


class Mlp(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear on ``(..., C)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, local depthwise conv, MLP: ``(B, C, H, W)`` -> same shape."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, conv: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, conv, 1, conv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        win = self.window
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        pad_b, pad_r = (-h) % win, (-w) % win
        padded = F.pad(tokens, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // win, (w + pad_r) // win
        windows = padded.view(b, nh, win, nw, win, c).transpose(2, 3).reshape(-1, win * win, c)
        attended = self.attn(windows).view(b, nh, nw, win, win, c).transpose(2, 3)
        attended = attended.reshape(b, nh * win, nw * win, c)[:, :h, :w]
        tokens = tokens + attended
        x = self.local_conv(tokens.permute(0, 3, 1, 2))
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(tokens)
        return tokens.permute(0, 3, 1, 2).contiguous()


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks then patch merging."""

    def __init__(self, dim: int, depth: int, expand: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then patch merging except in the last stage."""

    def __init__(
        self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None = None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder for SAM: ``(B, 3, S, S)`` -> ``(B, 256, S/16, S/16)``."""

    def __init__(self, cfg: TinyViTConfig = TINYVIT_5M, img_size: int = 1024) -> None:
        super().__init__()
        self.img_size = img_size
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(3, dims[0])
        layers: list[nn.Module] = [
            ConvLayer(
                dims[0], cfg.depths[0], cfg.mbconv_expand_ratio, dims[1], cfg.merge_strides[0]
            )
        ]
        for i in range(1, len(dims)):
            blocks = [
                TinyViTBlock(
                    dims[i],
                    cfg.num_heads[i],
                    cfg.window_sizes[i],
                    cfg.mlp_ratio,
                    cfg.local_conv_size,
                )
                for _ in range(cfg.depths[i])
            ]
            last = i == len(dims) - 1
            merge = None if last else PatchMerging(dims[i], dims[i + 1], cfg.merge_strides[i])
            layers.append(BasicLayer(blocks, merge))
        self.layers = nn.ModuleList(layers)
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], cfg.num_classes)
        layer_norm_2d = sam_module("common").LayerNorm2d
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            layer_norm_2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            layer_norm_2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
