"""The SAM-family 2D model behind every baseline: image encoder, prompt encoder, mask decoder.

:class:`SamFamily2D` holds the three parts under the names of the published checkpoints
(``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) and implements
:class:`fastsam3d.sam2d.contract.PromptableModel2D`. The prompt encoder and mask decoder are
segment-anything's modules, configured as every one of the five models' authors do (prompt
dim 256, mask-input channels 16, two-way transformer depth 2 / MLP 2048 / 8 heads, 3 multimask
outputs, IoU head depth 3 / hidden 256); only the image size changes (SAM-Med2D: 256).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn

from ..errors import InputError
from ._sam_import import sam_modeling
from .contract import Preprocessing2D

PROMPT_DIM = 256
PATCH = 16

MultimaskRule = Literal["sam", "tinysam"]
"""``sam``: the decoder's ``multimask_output`` (3 masks, or the single-mask token);
``tinysam``: TinySAM's decoder always returns the three multimask outputs, and TinySAM's demos
keep the one with the highest predicted IoU when one mask is wanted."""


def prompt_encoder(img_size: int) -> nn.Module:
    """segment-anything's ``PromptEncoder`` for a square input of side ``img_size``."""
    side = img_size // PATCH
    module: nn.Module = sam_modeling().PromptEncoder(
        embed_dim=PROMPT_DIM,
        image_embedding_size=(side, side),
        input_image_size=(img_size, img_size),
        mask_in_chans=16,
    )
    return module


def mask_decoder() -> nn.Module:
    """segment-anything's ``MaskDecoder`` as SAM's ``_build_sam`` configures it."""
    modeling = sam_modeling()
    module: nn.Module = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(
            depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8
        ),
        transformer_dim=PROMPT_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return module


class SamFamily2D(nn.Module):
    """A promptable 2D model: ``encode`` a prepared slice once, ``decode`` per prompt."""

    def __init__(
        self,
        name: str,
        image_encoder: nn.Module,
        input_size: int,
        preprocessing: Preprocessing2D,
        *,
        multimask_rule: MultimaskRule = "sam",
        flexible_input: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder(input_size)
        self.mask_decoder = mask_decoder()
        self._name = name
        self._input_size = input_size
        self._preprocessing: Preprocessing2D = preprocessing
        self.multimask_rule: MultimaskRule = multimask_rule
        self.flexible_input = flexible_input
        """Whether ``encode`` takes other square sides (multiples of 64; TinyViT has no absolute
        position table). The decoder still needs the ``input_size / 16`` embedding."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def input_size(self) -> int:
        return self._input_size

    @property
    def mask_size(self) -> int:
        return self._input_size // 4

    @property
    def preprocessing(self) -> Preprocessing2D:
        return self._preprocessing

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` prepared input -> image embedding ``(B, 256, S/16, S/16)``."""
        side = self._input_size
        ok = image.ndim == 4 and image.shape[1] == 3 and image.shape[2] == image.shape[3]
        if ok and image.shape[2] != side:
            ok = self.flexible_input and image.shape[2] % 64 == 0
        if not ok:
            raise InputError(
                f"{self._name}: expected a prepared input (B, 3, {side}, {side}), got "
                f"{tuple(image.shape)}"
            )
        return self.image_encoder(image.to(self.dtype))

    def decode(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits ``(B, M, m, m)`` and IoU estimates ``(B, M)``.

        ``embedding`` is ``(B, 256, S/16, S/16)``, or ``(1, ...)`` shared by ``B`` prompts;
        ``points`` ``(B, N, 2)`` (x, y) input pixels with ``labels`` ``(B, N)``; ``boxes``
        ``(B, 4)``; ``mask_logits`` ``(B, 1, m, m)``. ``M`` is 3 with ``multimask`` else 1.
        """
        if (points is None) != (labels is None):
            raise InputError(f"{self._name}: points and labels go together")
        batch = _prompt_batch(points, boxes, mask_logits)
        if embedding.shape[0] not in (1, batch):
            raise InputError(
                f"{self._name}: {embedding.shape[0]} embeddings for {batch} prompt sets"
            )
        if embedding.shape[0] == 1 or batch == 1:
            return self._decode_one(embedding, points, labels, boxes, mask_logits, multimask)
        outs = [
            self._decode_one(
                embedding[i : i + 1],
                None if points is None else points[i : i + 1],
                None if labels is None else labels[i : i + 1],
                None if boxes is None else boxes[i : i + 1],
                None if mask_logits is None else mask_logits[i : i + 1],
                multimask,
            )
            for i in range(batch)
        ]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _decode_one(
        self,
        embedding: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One embedding ``(1, 256, s, s)`` and ``B`` prompt sets (segment-anything's batching)."""
        dtype = self.dtype
        point_arg = None
        if points is not None and labels is not None:
            point_arg = (points.to(dtype), labels.to(torch.int64))
        sparse, dense = self.prompt_encoder(
            points=point_arg,
            boxes=None if boxes is None else boxes.to(dtype),
            masks=None if mask_logits is None else mask_logits.to(dtype),
        )
        pe = cast(Any, self.prompt_encoder).get_dense_pe()  # untyped segment-anything
        if self.multimask_rule == "sam":
            logits, iou = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            return logits, iou
        logits, iou = cast(Any, self.mask_decoder).predict_masks(
            image_embeddings=embedding,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        logits, iou = logits[:, 1:], iou[:, 1:]
        if multimask:
            return logits, iou
        best = iou.argmax(dim=1)
        rows = torch.arange(iou.shape[0], device=iou.device)
        return logits[rows, best][:, None], iou[rows, best][:, None]


def _prompt_batch(
    points: torch.Tensor | None, boxes: torch.Tensor | None, masks: torch.Tensor | None
) -> int:
    for t in (points, boxes, masks):
        if t is not None:
            return int(t.shape[0])
    return 1
