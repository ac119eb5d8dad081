"""3D ViT image encoder (SAM-Med3D ``ImageEncoderViT3D`` and the FastSAM3D student).

``(B, 1, S, S, S)`` normalised volume -> patch tokens ``(B, G, G, G, C)`` (+ learned absolute
position embedding) -> ``depth`` blocks -> neck -> image embedding ``(B, out_chans, G, G, G)``.
For the released models ``S = 128``, ``G = 8``, ``C = 768``, ``out_chans = 384``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..config import EncoderConfig
from .attention import EncoderAttention
from .layers import LayerNorm3d, MLPBlock, PatchEmbed3D


class Block3D(nn.Module):
    """One transformer block; attention-free when ``with_attention`` is false.

    ``block_formula="prenorm"``: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    ``block_formula="fastsam3d"``: ``x = x + attn(norm1(x)); x = norm2(x); x = x + mlp(x)``.
    """

    def __init__(self, cfg: EncoderConfig, index: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.formula = cfg.block_formula
        self.norm1: nn.LayerNorm | None = None
        self.attn: EncoderAttention | None = None
        if cfg.block_has_attention(index):
            window = cfg.block_window(index)
            self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
            self.attn = EncoderAttention(
                dim,
                cfg.num_heads,
                qkv_bias=cfg.qkv_bias,
                use_rel_pos=cfg.use_rel_pos,
                rel_pos_side=window if window > 0 else cfg.grid_size,
                window=window,
                impl=cfg.attn_impl,
                sparse=cfg.sparse,
            )
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, G, G, G, C)`` -> same."""
        if self.attn is not None and self.norm1 is not None:
            x = x + self.attn(self.norm1(x))
        if self.formula == "prenorm":
            return x + self.mlp(self.norm2(x))
        x = self.norm2(x)
        return x + self.mlp(x)


class ImageEncoderViT3D(nn.Module):
    """The image encoder; attribute names equal upstream's state_dict keys."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.grid_size
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block3D(cfg, i) for i in range(cfg.depth))
        self.neck = nn.Sequential(
            nn.Conv3d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm3d(cfg.out_chans),
            nn.Conv3d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(cfg.out_chans),
        )

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position: ``(B, C_in, S, S, S)`` -> ``(B, G, G, G, C)``."""
        expected = (self.cfg.in_chans, *(self.cfg.img_size,) * 3)
        if image.dim() != 5 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                f"image must be (B, {', '.join(map(str, expected))}), got {tuple(image.shape)}"
            )
        return self.patch_embed(image) + self.pos_embed

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Neck: ``(B, G, G, G, C)`` -> ``(B, out_chans, G, G, G)``."""
        return self.neck(tokens.permute(0, 4, 1, 2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, S, S)`` -> image embedding ``(B, out_chans, G, G, G)``."""
        x = self.embed(image)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward_tokens(self, image: torch.Tensor, depths: Iterable[int]) -> list[torch.Tensor]:
        """Token grids ``(B, G, G, G, C)`` after ``d`` blocks for each ``d`` in ``depths``; runs
        only as many blocks as the deepest request needs (no neck)."""
        wanted = list(depths)
        if not wanted or min(wanted) < 0 or max(wanted) > len(self.blocks):
            raise ValueError(f"depths {wanted} outside [0, {len(self.blocks)}]")
        x = self.embed(image)
        taken = {0: x}
        for i, block in enumerate(self.blocks[: max(wanted)], start=1):
            x = block(x)
            taken[i] = x
        return [taken[d] for d in wanted]

    def forward_intermediates(
        self, image: torch.Tensor, depths: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embedding plus the token grids after ``d`` blocks for each ``d`` in ``depths``.

        ``d = 0`` is the patch embedding + position; ``d = depth`` the last block's output.
        FastSAM3D's upstream list ``[embed, after 2, after 4, ..., neck]`` is
        ``depths=(0, 2, 4, ...)`` followed by the embedding.

        Returns:
            ``(embedding (B, out_chans, G, G, G), [tokens (B, G, G, G, C), ...])`` in the
            order of ``depths``.
        """
        for d in depths:
            if not 0 <= d <= len(self.blocks):
                raise ValueError(f"depth {d} outside [0, {len(self.blocks)}]")
        x = self.embed(image)
        taken = {0: x} if 0 in depths else {}
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in depths:
                taken[i] = x
        return self.head(x), [taken[d] for d in depths]
