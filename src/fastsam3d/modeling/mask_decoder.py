"""Mask decoder: a two-way transformer between prompt tokens and image tokens, then upscaling and
hypernetwork heads (SAM's decoder in 3D, SAM-Med3D ``MaskDecoder3D``).

Tokens = ``[iou_token, mask_tokens (M + 1), sparse prompt tokens]``; image tokens = image
embedding + dense prompt embedding, ``G^3`` of them, with the dense positional encoding. Output:
low-resolution logits ``(B, M + 1, 4G, 4G, 4G)`` and IoU predictions ``(B, M + 1)``; single-mask
output takes index 0, multimask output indices ``1..M``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AttentionImpl, DecoderConfig, SparseAttentionConfig
from .detail import DetailRefiner
from .feature_refiner import FeatureRefiner
from .fine_stage import FineStage
from .layers import MLP, LayerNorm3d, MLPBlock
from .similarity import SimilarityPrompt
from .sparse_attention import dilated_cross_attention


class DecoderAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``dim / downsample`` channels.

    ``sparse`` (token-to-image attention only) dilates the keys, see
    :func:`~fastsam3d.modeling.sparse_attention.dilated_cross_attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        impl: AttentionImpl = "sdpa",
        sparse: SparseAttentionConfig | None = None,
    ) -> None:
        super().__init__()
        inner = dim // downsample_rate
        self.num_heads = num_heads
        self.impl = impl
        self.sparse = sparse
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q (B, Nq, dim)``, ``k, v (B, Nk, dim)`` -> ``(B, Nq, dim)``."""
        qh = self._heads(self.q_proj(q))
        kh = self._heads(self.k_proj(k))
        vh = self._heads(self.v_proj(v))
        if self.sparse is not None:
            out = dilated_cross_attention(qh, kh, vh, self.sparse.patterns)
        elif self.impl == "eager":
            attn = (qh @ kh.transpose(-2, -1)) / (qh.shape[-1] ** 0.5)
            out = attn.softmax(dim=-1) @ vh
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock3D(nn.Module):
    """Self-attention on tokens, token->image, MLP on tokens, image->token (SAM's order)."""

    def __init__(self, cfg: DecoderConfig, skip_first_layer_pe: bool) -> None:
        super().__init__()
        dim, heads, rate = cfg.transformer_dim, cfg.num_heads, cfg.attention_downsample_rate
        eps = cfg.layer_norm_eps
        self.self_attn = DecoderAttention(dim, heads, impl=cfg.attn_impl)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_token_to_image = DecoderAttention(
            dim, heads, rate, impl=cfg.attn_impl, sparse=cfg.sparse
        )
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, cfg.mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.norm4 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn_image_to_token = DecoderAttention(dim, heads, rate, impl=cfg.attn_impl)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries (B, T, D)``, ``keys (B, G^3, D)`` -> updated ``(queries, keys)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    """``depth`` two-way blocks then a final token->image attention."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        dim = cfg.transformer_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock3D(cfg, skip_first_layer_pe=(i == 0)) for i in range(cfg.depth)
        )
        self.final_attn_token_to_image = DecoderAttention(
            dim,
            cfg.num_heads,
            cfg.attention_downsample_rate,
            impl=cfg.attn_impl,
            sparse=cfg.sparse,
        )
        self.norm_final_attn = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image, image_pe (B, D, G, G, G)``, ``tokens (B, T, D)`` ->
        ``(tokens (B, T, D), image tokens (B, G^3, D))``."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder3D(nn.Module):
    """Predicts low-resolution mask logits and IoU scores from image and prompt embeddings."""

    def __init__(
        self, cfg: DecoderConfig, fine_channels: int = 0, fine_stage_channels: int = 0
    ) -> None:
        """``fine_channels``: width of the prompt encoder's full-resolution embedding (0: none);
        only the feature refiner needs it. ``fine_stage_channels``: width of the encoder's
        ``S/2`` features, read by the fine stage (``cfg.fine_stage``)."""
        super().__init__()
        dim = cfg.transformer_dim
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer3D(cfg)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        w2, w4 = cfg.upscale_widths
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, w2, kernel_size=2, stride=2),
            LayerNorm3d(w2),
            nn.GELU(),
            nn.ConvTranspose3d(w2, w4, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.image_features = cfg.image_features
        self.feature_gate8: nn.Parameter | None = None
        self.feature_gate4: nn.Parameter | None = None
        if cfg.feature_gates:
            self.feature_gate8 = nn.Parameter(torch.zeros(1, w2, 1, 1, 1))
            self.feature_gate4 = nn.Parameter(torch.zeros(1, w4, 1, 1, 1))
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, w4, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, cfg.iou_head_hidden_dim, self.num_mask_tokens, cfg.iou_head_depth
        )
        self.refiner = DetailRefiner(cfg.refine_channels) if cfg.refine_channels else None
        self.similarity = (
            SimilarityPrompt(dim, w4, cfg.similarity_logits) if cfg.click_similarity else None
        )
        self.feature_refiner = (
            FeatureRefiner(w2 + w4, fine_channels) if cfg.refine_with_features else None
        )
        self.fine_stage = (
            FineStage(dim, w4, fine_stage_channels, self.num_mask_tokens)
            if cfg.fine_stage
            else None
        )

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        detail: torch.Tensor | None = None,
        features: list[torch.Tensor] | None = None,
        fine: torch.Tensor | None = None,
        similarity: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks.

        Args:
            image_embedding: ``(B or 1, D, G, G, G)``.
            image_pe: ``(1, D, G, G, G)`` dense positional encoding.
            sparse: ``(B, T, D)`` prompt tokens.
            dense: ``(B, D, G, G, G)`` dense prompt embedding.
            multimask: return the 3 multimask outputs instead of the single one.
            detail: ``(B or 1, 4, 4G, 4G, 4G)`` image statistics on the logit grid (models
                with a refiner only, see :mod:`fastsam3d.modeling.detail`).
            features: ``[(B or 1, w2, 2G, 2G, 2G), (B or 1, w4, 4G, 4G, 4G)]`` image features
                added after each upscaling stage (models with ``image_features`` only), or
                read by the feature refiner (``refine_with_features``); a third, the ``S/2``
                features as ``(B or 1, f2 * 8, 4G, 4G, 4G)``, feeds the fine stage
                (``fine_stage``; layout of :func:`~fastsam3d.modeling.fine_stage.sub_cells`).
            fine: ``(B, w4, 4G, 4G, 4G)`` full-resolution prompt embedding added at the last
                stage, or read by the feature refiner (models whose prompt encoder has
                ``fine_channels``).
            similarity: ``(B, 2, G, G, G)`` click similarity
                (:func:`~fastsam3d.modeling.similarity.click_similarity`; models with
                ``click_similarity`` only).

        Returns:
            ``(logits (B, 1|M, L, L, L), iou (B, 1|M))``, ``L = 4G`` (``8G`` with a fine stage).
        """
        b = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
        src = image_embedding.expand(b, -1, -1, -1, -1) + dense
        if self.similarity is not None:
            if similarity is None:
                raise ValueError("this decoder reads the click similarity: pass similarity")
            similarity = similarity.to(src.dtype)
            src = src + self.similarity.tokens(similarity)
            fine_sim = self.similarity.upscaled(similarity)
            fine = fine_sim if fine is None else fine + fine_sim
        pos = image_pe.to(src.dtype).expand(b, -1, -1, -1, -1)
        hs, src_tokens = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens]

        g = src.shape[-1]
        grid_tokens = src_tokens.transpose(1, 2).reshape(src.shape[:2] + (g,) * 3)
        if self.feature_refiner is None:
            upscaled = self._upscale(grid_tokens, features, fine)
        else:  # the ViT's mask first; features and fine prompt refine it below
            upscaled = self.output_upscaling(grid_tokens)
        hyper = torch.stack(
            [mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        bu, cu, *spatial = upscaled.shape
        masks = (hyper @ upscaled.view(bu, cu, -1)).view(bu, -1, *spatial)
        if self.similarity is not None and self.similarity.mix is not None:
            assert similarity is not None
            masks = masks + self.similarity.logits(similarity, mask_out)
        iou = self.iou_prediction_head(iou_out)
        chosen = slice(1, None) if multimask else slice(0, 1)
        masks, iou = masks[:, chosen], iou[:, chosen]
        if self.fine_stage is not None:
            if features is None or len(features) != 3:
                raise ValueError("this decoder has a fine stage: pass the encoder's three maps")
            which = range(self.num_mask_tokens)[chosen]
            masks = self.fine_stage(masks, upscaled, features[2], mask_out[:, chosen], which)
        if self.feature_refiner is not None:  # only the masks returned
            if features is None or len(features) != 2:
                raise ValueError("this decoder refines masks from image features: pass both maps")
            masks = self.feature_refiner(masks, features, fine)
        if self.refiner is not None:  # only the masks returned
            if detail is None:
                raise ValueError("this decoder refines masks from image detail: pass detail")
            masks = self.refiner(masks, detail)
        return masks, iou

    def _upscale(
        self,
        x: torch.Tensor,
        features: list[torch.Tensor] | None,
        fine: torch.Tensor | None,
    ) -> torch.Tensor:
        """``(B, D, G, G, G)`` -> ``(B, w4, 4G, 4G, 4G)``; with image features (and the fine
        prompt) added after each transposed conv, before its activation (SAM 2's order)."""
        if not self.image_features and fine is None:
            return self.output_upscaling(x)
        up1, norm1, act1, up2, act2 = self.output_upscaling
        x = up1(x)
        if self.image_features:
            if features is None or len(features) < 2:
                raise ValueError("this decoder adds image features: pass the encoder's maps")
            x = x + _gated(features[0], self.feature_gate8)
        x = up2(act1(norm1(x)))
        if self.image_features:
            assert features is not None
            x = x + _gated(features[1], self.feature_gate4)
        if fine is not None:
            x = x + fine
        return act2(x)


def _gated(feature: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``feature`` scaled by a per-channel ``gate`` ``(1, C, 1, 1, 1)`` (``None``: as is)."""
    return feature if gate is None else gate * feature
