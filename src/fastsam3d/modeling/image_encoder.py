"""3D ViT image encoder (SAM-Med3D ``ImageEncoderViT3D`` and the FastSAM3D student).

``(B, 1, S, S, S)`` normalised volume -> patch tokens ``(B, G, G, G, C)`` (+ learned absolute
position embedding) -> ``depth`` blocks -> neck -> image embedding ``(B, out_chans, G, G, G)``.
For the released models ``S = 128``, ``G = 8``, ``C = 768``, ``out_chans = 384``.

Models trained here may replace the linear patch embedding by a convolutional stem
(:class:`ConvStem`, ``EncoderConfig.stem_channels``) whose intermediate maps at ``S/8`` and
``S/4`` also become high-resolution features for the mask decoder
(``EncoderConfig.feature_channels``, :meth:`ImageEncoderViT3D.forward_features`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..config import EncoderConfig
from .attention import EncoderAttention
from .layers import LayerNorm3d, MLPBlock, PatchEmbed3D


class ResidualConv3d(nn.Module):
    """``x + conv3(gelu(norm(x)))``: a pre-norm residual 3^3 convolution, ``(B, C, D, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm3d(channels)
        self.act = nn.GELU()
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.act(self.norm(x)))


class ConvStem(nn.Module):
    """Early convolutions before the ViT (they make ViTs train far faster on little data).

    ``(B, 1, S, S, S)`` -> ``4^3`` patches to ``c4`` channels + residual conv (``S/4`` map)
    -> stride-2 conv to ``c8`` + residual conv (``S/8`` map) -> stride-2 conv to the ``S/16``
    tokens ``(B, G, G, G, C)``.
    """

    def __init__(self, in_chans: int, widths: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        c4, c8 = widths
        self.patch4 = nn.Conv3d(in_chans, c4, kernel_size=4, stride=4)
        self.block4 = ResidualConv3d(c4)
        self.down8 = nn.Sequential(LayerNorm3d(c4), nn.Conv3d(c4, c8, kernel_size=2, stride=2))
        self.block8 = ResidualConv3d(c8)
        self.down16 = nn.Sequential(
            LayerNorm3d(c8), nn.Conv3d(c8, embed_dim, kernel_size=2, stride=2)
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``-> (tokens (B, G, G, G, C), map8 (B, c8, S/8, ...), map4 (B, c4, S/4, ...))``."""
        map4 = self.block4(self.patch4(image))
        map8 = self.block8(self.down8(map4))
        tokens = self.down16(map8).permute(0, 2, 3, 4, 1)
        return tokens, map8, map4


class FineFeatures(nn.Module):
    """``(B, in_chans, S, S, S)`` -> ``(B, C, S/2, S/2, S/2)`` image features for the decoder's fine
    stage (:mod:`fastsam3d.modeling.fine_stage`): a stride-2 ``2^3`` conv and a residual ``3^3``
    conv."""

    def __init__(self, in_chans: int, channels: int) -> None:
        super().__init__()
        self.patch2 = nn.Conv3d(in_chans, channels, kernel_size=2, stride=2)
        self.block2 = ResidualConv3d(channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.block2(self.patch2(image))


class FeatureHeads(nn.Module):
    """1x1 projections of the stem's maps to the decoder's upscaling widths ``(f8, f4)``."""

    def __init__(self, stem: tuple[int, ...], widths: tuple[int, ...]) -> None:
        super().__init__()
        self.proj8 = nn.Conv3d(stem[1], widths[0], kernel_size=1)
        self.proj4 = nn.Conv3d(stem[0], widths[1], kernel_size=1)

    def forward(self, map8: torch.Tensor, map4: torch.Tensor) -> list[torch.Tensor]:
        return [self.proj8(map8), self.proj4(map4)]


class Block3D(nn.Module):
    """One transformer block; attention-free when ``with_attention`` is false.

    ``block_formula="prenorm"``: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    ``block_formula="fastsam3d"``: ``x = x + attn(norm1(x)); x = norm2(x); x = x + mlp(x)``.
    With ``layer_scale_init > 0`` the branches are ``ls1 * attn(...)`` and ``ls2 * mlp(...)``.
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
                distance_bias=cfg.attn_distance_bias,
            )
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))
        self.ls1: nn.Parameter | None = None
        self.ls2: nn.Parameter | None = None
        if cfg.layer_scale_init > 0:
            if self.attn is not None:
                self.ls1 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
            self.ls2 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, G, G, G, C)`` -> same."""
        if self.attn is not None and self.norm1 is not None:
            branch = self.attn(self.norm1(x))
            x = x + (branch if self.ls1 is None else self.ls1 * branch)
        if self.formula == "prenorm":
            branch = self.mlp(self.norm2(x))
        else:
            x = self.norm2(x)
            branch = self.mlp(x)
        return x + (branch if self.ls2 is None else self.ls2 * branch)


class ImageEncoderViT3D(nn.Module):
    """The image encoder; attribute names equal upstream's state_dict keys."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.grid_size
        self.patch_embed: PatchEmbed3D | None = None
        self.stem: ConvStem | None = None
        if cfg.stem_channels:
            self.stem = ConvStem(cfg.in_chans, cfg.stem_channels, cfg.embed_dim)
        else:
            self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.features: FeatureHeads | None = None
        if cfg.feature_channels:
            self.features = FeatureHeads(cfg.stem_channels, cfg.feature_channels)
        self.fine_features: FineFeatures | None = None
        if cfg.fine_feature_channels:
            self.fine_features = FineFeatures(cfg.in_chans, cfg.fine_feature_channels)
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
        return self._embed(image)[0]

    def _embed(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens ``(B, G, G, G, C)`` and the high-resolution features (empty without)."""
        expected = (self.cfg.in_chans, *(self.cfg.img_size,) * 3)
        if image.dim() != 5 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                f"image must be (B, {', '.join(map(str, expected))}), got {tuple(image.shape)}"
            )
        if self.stem is None:
            assert self.patch_embed is not None
            return self.patch_embed(image) + self.pos_embed, []
        tokens, map8, map4 = self.stem(image)
        features = [] if self.features is None else self.features(map8, map4)
        if self.fine_features is not None:
            features.append(self.fine_features(image))
        return tokens + self.pos_embed, features

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Neck: ``(B, G, G, G, C)`` -> ``(B, out_chans, G, G, G)`` (after subtracting the
        grid's mean token with ``center_tokens``)."""
        if self.cfg.center_tokens:
            tokens = tokens - tokens.mean(dim=(1, 2, 3), keepdim=True)
        return self.neck(tokens.permute(0, 4, 1, 2, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, S, S, S)`` -> image embedding ``(B, out_chans, G, G, G)``."""
        return self.forward_features(image)[0]

    def forward_features(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image embedding and the high-resolution features for the decoder: ``[(B, f8, S/8,
        S/8, S/8), (B, f4, S/4, S/4, S/4)]``, then ``(B, f2, S/2, S/2, S/2)`` with
        ``fine_feature_channels`` (an empty list for encoders without them)."""
        x, features = self._embed(image)
        for block in self.blocks:
            x = block(x)
        return self.head(x), features

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
        embedding, tokens, _ = self.forward_all(image, depths)
        return embedding, tokens

    def forward_all(
        self, image: torch.Tensor, depths: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`forward_intermediates` plus the high-resolution features (for distillation)."""
        for d in depths:
            if not 0 <= d <= len(self.blocks):
                raise ValueError(f"depth {d} outside [0, {len(self.blocks)}]")
        x, features = self._embed(image)
        taken = {0: x} if 0 in depths else {}
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in depths:
                taken[i] = x
        return self.head(x), [taken[d] for d in depths], features
