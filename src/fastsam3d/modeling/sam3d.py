"""The promptable 3D model: image encoder + prompt encoder + mask decoder.

The model is stateless: :meth:`Sam3D.encode` computes an image embedding once and
:meth:`Sam3D.decode` turns prompts into masks; callers (sessions, evaluation) own the caches.

Model frame: the input is a ``(B, 1, S, S, S)`` float volume already normalised (S = 128 for the
released weights); point prompts are voxel indices of that volume in tensor axis order; outputs
are low-resolution logits on a ``4G = S / 4`` grid (32^3) covering the same volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .detail import N_STATS, image_detail, pack, unpack
from .fine_stage import sub_cells
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .similarity import click_similarity


class EmbeddingParts(NamedTuple):
    """The parts of :meth:`Sam3D.encode`'s output."""

    vit: torch.Tensor
    """``(B, D, G, G, G)`` image embedding."""
    features: list[torch.Tensor]
    """High-resolution features ``[(B, f8, 2G, ...), (B, f4, 4G, ...)]`` or empty; with a fine
    stage also the ``S/2`` features as ``(B, f2 * 8, 4G, ...)``, each ``4G`` cell's ``2^3``
    sub-cells in channels (:func:`~fastsam3d.modeling.fine_stage.sub_cells`)."""
    detail: torch.Tensor | None
    """``(B, 4, 4G, 4G, 4G)`` image statistics (refiner models) or ``None``."""


class Sam3D(nn.Module):
    """SAM-Med3D / FastSAM3D model; submodule names equal upstream's state_dict prefixes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoderViT3D(cfg.encoder)
        self.prompt_encoder = PromptEncoder3D(
            cfg.prompt, cfg.embedding_grid, cfg.image_size, cfg.low_res_size
        )
        self.mask_decoder = MaskDecoder3D(
            cfg.decoder,
            fine_channels=cfg.prompt.fine_channels,
            fine_stage_channels=cfg.encoder.fine_feature_channels,
        )

    @property
    def device(self) -> torch.device:
        return self.image_encoder.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_encoder.pos_embed.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image embedding.

        Args:
            image: ``(B, 1, S, S, S)`` float, already normalised (z-score over voxels > 0 for the
                released weights).

        Returns:
            ``(B, D, G, G, G)``; ``(B, 384, 8, 8, 8)`` for the released models. Models with
            high-resolution image features append them folded into channels (``f8 * 2^3 +
            f4 * 4^3``, and ``f2 * 8^3`` with a fine stage), models with a detail refiner
            ``4 * 4^3`` channels of the image's statistics on the logit grid
            (:mod:`~fastsam3d.modeling.detail`); one tensor, so sessions cache it and runtimes
            export it unchanged. :meth:`split_embedding` undoes the packing.
        """
        image = image.to(self.dtype)
        return self._pack(image, *self.image_encoder.forward_features(image))

    def encode_with_tokens(
        self, image: torch.Tensor, depths: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`encode` and the encoder's token grids ``(B, G, G, G, C)`` after ``d`` blocks
        for each ``d`` in ``depths`` (one pass; for layer-wise distillation)."""
        image = image.to(self.dtype)
        embedding, tokens, features = self.image_encoder.forward_all(image, depths)
        return self._pack(image, embedding, features), tokens

    def _pack(
        self, image: torch.Tensor, embedding: torch.Tensor, features: list[torch.Tensor]
    ) -> torch.Tensor:
        g = self.cfg.embedding_grid
        parts = [embedding, *(pack(f, f.shape[-1] // g) for f in features)]
        if self.mask_decoder.refiner is not None:
            low = self.cfg.low_res_size
            detail = image_detail(image, image.shape[-1] // low)
            parts.append(pack(detail, low // g))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def split_embedding(self, embedding: torch.Tensor) -> EmbeddingParts:
        """:meth:`encode`'s output -> its parts (ViT embedding, decoder features, detail)."""
        d, g = self.cfg.prompt.embed_dim, self.cfg.embedding_grid
        layout = self._feature_layout()
        widths = [d, *(channels * factor**3 for channels, factor in layout)]
        rest = embedding.shape[1] - sum(widths)
        # one split, not a slice per part: in training, the backward of each slice would
        # write a zero gradient the size of the whole embedding
        parts = torch.split(embedding, [*widths, rest] if rest else widths, dim=1)
        features = [
            sub_cells(p) if f == 8 else unpack(p, f)  # the fine stage's layout
            for p, (_, f) in zip(parts[1:], layout, strict=False)
        ]
        detail = None
        if self.mask_decoder.refiner is not None:
            detail = unpack(parts[-1], self.cfg.low_res_size // g)
        return EmbeddingParts(parts[0], features, detail)

    def _feature_layout(self) -> list[tuple[int, int]]:
        """``(channels, upsampling factor)`` of each high-resolution feature map."""
        widths = self.cfg.encoder.feature_channels
        layout = list(zip(widths, (2, 4), strict=True)) if widths else []
        if self.cfg.encoder.fine_feature_channels:
            layout.append((self.cfg.encoder.fine_feature_channels, 8))
        return layout

    @property
    def embedding_channels(self) -> int:
        """Channels of :meth:`encode`'s output (the ViT's, plus packed features/detail)."""
        extra = sum(c * f**3 for c, f in self._feature_layout())
        if self.mask_decoder.refiner is not None:
            extra += N_STATS * (self.cfg.low_res_size // self.cfg.embedding_grid) ** 3
        return self.cfg.prompt.embed_dim + extra

    def prompt_embeddings(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``(B, N + 1, D)`` and dense ``(B, D, G, G, G)`` prompt embeddings.

        Same semantics as upstream ``prompt_encoder(points=(points, labels), boxes=None,
        masks=mask_logits)``: a pad point (label -1) is appended; ``mask_logits=None`` uses the
        learned no-mask embedding.
        """
        self.check_prompts(points, labels, mask_logits)
        if mask_logits is not None:
            mask_logits = mask_logits.to(self.dtype)
        return self.prompt_encoder(points, labels, mask_logits)

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for point prompts.

        Args:
            embedding: ``(B, D, G, G, G)`` from :meth:`encode`, or ``(1, ...)`` shared by all
                ``B`` prompt sets.
            points: ``(B, N, 3)`` float voxel indices of the ``S^3`` model input, tensor axis
                order.
            labels: ``(B, N)`` int: 1 foreground, 0 background, -1 padding (ignored).
            mask_logits: optional ``(B, 1, L, L, L)`` previous low-resolution logits
                (``L = cfg.low_res_size``: ``4G``, ``8G`` with a fine stage). Upstream
                evaluates the first click with all zeros here (not ``None``) and later clicks
                with the previous logits.
            multimask: return 3 candidate masks instead of 1.

        Returns:
            ``(low_res_logits (B, 1|3, L, L, L), iou (B, 1|3))``; threshold logits at 0.
        """
        self.check_prompts(points, labels, mask_logits)
        b = points.shape[0]
        g = self.cfg.embedding_grid
        expected = (self.embedding_channels, g, g, g)
        if embedding.dim() != 5 or tuple(embedding.shape[1:]) != expected:
            raise ValueError(
                f"embedding must be (B, {', '.join(map(str, expected))}), "
                f"got {tuple(embedding.shape)}"
            )
        if embedding.shape[0] not in (1, b):
            raise ValueError(
                f"embedding batch {embedding.shape[0]} does not match {b} prompt sets "
                "(use the same batch or 1)"
            )
        return self.decode_unchecked(embedding, points, labels, mask_logits, multimask)

    def decode_unchecked(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` without input validation (the graph runtimes export)."""
        if mask_logits is not None:
            mask_logits = mask_logits.to(self.dtype)
        sparse, dense, fine = self.prompt_encoder.embed_all(points, labels, mask_logits)
        parts = self.split_embedding(embedding.to(self.dtype))
        similarity = None
        if self.cfg.decoder.click_similarity:
            similarity = click_similarity(parts.vit, points, labels, self.cfg.image_size)
        return self.mask_decoder(
            parts.vit,
            self.prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask,
            parts.detail,
            parts.features,
            fine,
            similarity,
        )

    def forward(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` then :meth:`decode` (for training)."""
        return self.decode(self.encode(image), points, labels, mask_logits, multimask)

    def check_prompts(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_logits: torch.Tensor | None,
    ) -> None:
        """Raise ``ValueError`` naming the shape or value when prompts do not fit :meth:`decode`
        (points ``(B, N, 3)``, integer labels ``(B, N)`` in -1/0/1, mask logits
        ``(B, 1, L, L, L)``); the runtimes' wrappers call it before their graphs run."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"points must be (B, N, 3), got {tuple(points.shape)}")
        if labels.shape != points.shape[:2]:
            raise ValueError(
                f"labels must be (B, N) = {tuple(points.shape[:2])}, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers (-1, 0, 1), got dtype {labels.dtype}")
        bad = labels[(labels < -1) | (labels > 1)]
        if bad.numel():
            raise ValueError(f"labels must be -1, 0 or 1, got {sorted(set(bad.tolist()))}")
        if mask_logits is not None:
            s = self.prompt_encoder.mask_size
            expected = (points.shape[0], 1, s, s, s)
            if tuple(mask_logits.shape) != expected:
                raise ValueError(f"mask_logits must be {expected}, got {tuple(mask_logits.shape)}")


def upsample_logits(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """Upstream's post-processing: trilinear ``(B, C, L, L, L)`` -> ``(B, C, size^3)``.

    ``align_corners=False``; a voxel is foreground where the result is ``> 0`` (sigmoid > 0.5).
    """
    return F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
