"""Model configuration: frozen dataclasses that describe an architecture completely.

A :class:`ModelConfig` is plain data (ints, floats, strings, tuples). It is stored inside our native
checkpoints, so it round-trips through :func:`ModelConfig.to_dict` / :func:`ModelConfig.from_dict`,
and ``from_dict`` rejects unknown keys so that a typo never silently falls back to a default.

Runtime choices that do not change the weights (attention implementation, sparse attention) are
config fields too, so one code path serves every variant; :func:`dataclasses.replace` derives a
variant from a registry entry.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from .errors import InputError

BlockFormula = Literal["prenorm", "fastsam3d"]
"""How an encoder block combines attention, MLP and the two LayerNorms.

- ``"prenorm"``: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))`` (SAM-Med3D, standard ViT).
- ``"fastsam3d"``: ``x = x + attn(norm1(x)); x = norm2(x); x = x + mlp(x)``: the output of
  ``norm2`` *replaces* the residual stream (FastSAM3D's code; its released weights need it).
  Attention-free blocks are then ``x = norm2(x); x = x + mlp(x)``.
"""

Prompting = Literal["newest", "all"]
"""Which clicks a prediction sends: the newest (with the previous logits) or all of the region."""
PROMPTING_CHOICES = ("auto", "newest", "all")
"""How clicks reach the model: ``newest`` (only the latest click of the region with the previous
mask), ``all`` (every click of the region), ``auto`` (as the model was trained)."""

AttentionImpl = Literal["sdpa", "eager"]
"""``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` with the relative-position
bias as an additive mask (and the exact pad-free window form). ``"eager"``: a literal
re-statement of upstream's arithmetic (explicit softmax, zero-padded windows); the reference."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SparsePattern:
    """One dilated-attention pattern (LongNet / FastSAM3D paper section 2.3).

    The flattened token sequence is cut into segments of ``segment_length`` tokens; inside a
    segment every ``dilation``-th token is kept, starting at an offset that depends on the head
    (head ``h`` uses offset ``h % dilation``), and attention runs inside each sparse segment.
    ``segment_length = N, dilation = 1`` is dense attention.
    """

    segment_length: int
    dilation: int = 1

    def __post_init__(self) -> None:
        if self.segment_length < 1:
            raise InputError(f"segment_length must be >= 1, got {self.segment_length}")
        if self.dilation < 1:
            raise InputError(f"dilation must be >= 1, got {self.dilation}")
        if self.segment_length % self.dilation:
            raise InputError(
                f"segment_length ({self.segment_length}) must be a multiple of dilation "
                f"({self.dilation})"
            )


@dataclass(frozen=True, slots=True)
class SparseAttentionConfig:
    """Dilated ("3D sparse flash") attention: one or several patterns.

    Several patterns are mixed by their softmax denominators (LongNet), which equals one softmax
    over the union (with multiplicity) of the keys each pattern lets a query see.
    """

    patterns: tuple[SparsePattern, ...]

    def __post_init__(self) -> None:
        if not self.patterns:
            raise InputError("SparseAttentionConfig needs at least one pattern")

    def check(self, num_tokens: int, num_heads: int, where: str, segmented: bool = True) -> None:
        """Raise ``ValueError`` unless every pattern fits ``num_tokens`` and ``num_heads``.

        ``segmented=False`` (cross-attention: only the keys are dilated) checks that each dilation
        divides ``num_tokens`` instead of the segment length.
        """
        for p in self.patterns:
            if not segmented and num_tokens % p.dilation:
                raise InputError(
                    f"{where}: sparse dilation {p.dilation} does not divide the {num_tokens} keys"
                )
            if segmented and num_tokens % p.segment_length:
                raise InputError(
                    f"{where}: sparse segment_length {p.segment_length} does not divide the "
                    f"{num_tokens} tokens"
                )
            if p.dilation > num_heads:
                raise InputError(
                    f"{where}: dilation {p.dilation} > {num_heads} heads; with per-head offsets "
                    "some tokens would be attended by no head"
                )


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """3D ViT image encoder (SAM-Med3D ``ImageEncoderViT3D``).

    Input ``(B, in_chans, S, S, S)`` with ``S = img_size``; token grid ``G = S / patch_size`` per
    axis; output ``(B, out_chans, G, G, G)``.
    """

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 384
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    """Side of the attention window of non-global blocks; 0 means every block is global."""
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    attn_free_blocks: int = 0
    """Number of leading MLP-only blocks (FastSAM3D's ``skip_layer``)."""
    block_formula: BlockFormula = "prenorm"
    layer_norm_eps: float = 1e-6
    attn_impl: AttentionImpl = "sdpa"
    sparse: SparseAttentionConfig | None = None
    stem_channels: tuple[int, ...] = ()
    """Convolutional stem instead of the linear 16^3 patch embedding: ``(c4, c8)`` channels at
    ``S/4`` and ``S/8`` (each a strided conv and a residual 3^3 conv), then a stride-2 conv to
    the ``S/16`` tokens. Empty: upstream's patch embedding. Needs ``patch_size = 16``."""
    feature_channels: tuple[int, ...] = ()
    """High-resolution image features handed to the mask decoder: ``(f8, f4)`` channels at
    ``S/8`` and ``S/4`` (1x1 projections of the stem's outputs; the decoder's upscaling widths).
    Empty: none (upstream). Needs a stem."""
    fine_feature_channels: int = 0
    """Image features at ``S/2`` for the decoder's fine stage (``DecoderConfig.fine_stage``): a
    stride-2 ``2^3`` convolution of the image and a residual ``3^3`` convolution, computed once
    per region in ``encode`` (the stem itself starts at ``S/4``). 0: none (upstream). Needs
    ``feature_channels``."""
    layer_scale_init: float = 0.0
    """LayerScale (CaiT): each block's attention and MLP branch is multiplied by a learned
    per-channel vector (``ls1``, ``ls2``) initialised to this value, so blocks start close to
    the identity and the stem's content reaches the neck from the first step. 0: none
    (upstream)."""
    attn_distance_bias: bool = False
    """3D ALiBi: a fixed ``-slope * distance`` added to each head's attention logits, slopes
    from 2 (local) to 1/16 (nearly global) over the heads, so attention is neither uniform nor
    position-blind at the start of training. Needs global dense attention (``window_size``
    0 for every block, no ``sparse``). False: none (upstream)."""
    center_tokens: bool = False
    """Subtract the mean token of the grid before the neck. Trained from scratch, the blocks
    add a large vector shared by every token (attention near uniform), and the neck's
    per-token LayerNorms then pass almost only that vector: the embedding hardly changes with
    the image (encoder probe of e12 and the shipped teacher). Centring hands the neck what
    differs between tokens. False: none (upstream)."""

    def __post_init__(self) -> None:
        _check_choice("block_formula", self.block_formula, BlockFormula)
        if self.stem_channels and (len(self.stem_channels) != 2 or self.patch_size != 16):
            raise InputError(
                "stem_channels must be two widths (S/4, S/8) and needs patch_size 16, got "
                f"{self.stem_channels} with patch_size {self.patch_size}"
            )
        if self.feature_channels and (len(self.feature_channels) != 2 or not self.stem_channels):
            raise InputError(
                f"feature_channels must be two widths (S/8, S/4) and needs a stem, got "
                f"{self.feature_channels} with stem {self.stem_channels}"
            )
        if self.fine_feature_channels < 0 or (
            self.fine_feature_channels and not self.feature_channels
        ):
            raise InputError(
                "fine_feature_channels must be >= 0 and needs feature_channels, got "
                f"{self.fine_feature_channels} with feature_channels {self.feature_channels}"
            )
        if self.attn_distance_bias and (self.window_size != 0 or self.sparse is not None):
            raise InputError(
                "attn_distance_bias needs global dense attention: window_size 0 and no sparse "
                f"patterns (got window_size {self.window_size}, sparse {self.sparse})"
            )
        if self.layer_scale_init < 0:
            raise InputError(f"layer_scale_init must be >= 0, got {self.layer_scale_init}")
        if any(c < 1 for c in (*self.stem_channels, *self.feature_channels)):
            raise InputError("stem and feature widths must be positive")
        _check_choice("attn_impl", self.attn_impl, AttentionImpl)
        if self.img_size % self.patch_size:
            raise InputError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise InputError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        if not 0 <= self.attn_free_blocks <= self.depth:
            raise InputError(f"attn_free_blocks must be in [0, {self.depth}]")
        if self.window_size < 0:
            raise InputError(f"window_size must be >= 0, got {self.window_size}")
        if self.sparse is not None:
            self.sparse.check(self.grid_size**3, self.num_heads, "encoder")

    @property
    def grid_size(self) -> int:
        """Tokens per axis: ``img_size // patch_size``."""
        return self.img_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def block_window(self, index: int) -> int:
        """Window side of block ``index`` (0 = global attention)."""
        return 0 if index in self.global_attn_indexes else self.window_size

    def block_has_attention(self, index: int) -> bool:
        return index >= self.attn_free_blocks


@dataclass(frozen=True, slots=True)
class PromptEncoderConfig:
    """3D prompt encoder: random-Fourier point encoding and a mask-downscaling CNN.

    ``swap_pe_axes``: encode the image grid with axes 0 and 1 swapped relative to the points, as
    upstream does (its released weights depend on it). Models trained here set it to False, so a
    point and the grid cell it lies in get the same encoding.

    ``click_maps``: also embed the clicks densely. Gaussian maps of the positive and of the
    negative clicks on the ``4G``-cube mask grid (``click_map_sigma`` in its cells) are stacked
    with the previous logits as a 3-channel input of the mask-downscaling CNN, so every image
    token knows how far it is from each click. Off for upstream's models (1 channel).
    """

    embed_dim: int = 384
    mask_in_chans: int = 16
    swap_pe_axes: bool = True
    click_maps: bool = False
    click_map_sigma: float = 1.0
    fine_channels: int = 0
    """Also embed the mask input (previous logits and click maps) at full ``4G`` resolution
    with a 1x1 conv to this many channels, added to the decoder's last upscaling stage, so a
    click can change the mask exactly where it lies (0: off, as upstream)."""
    prompting: Prompting = "newest"
    """How the model expects clicks (what sessions and evaluation send by default):
    ``"newest"`` click(s) plus the previous logits (SAM-Med3D's evaluation), or ``"all"``
    clicks of the region plus the previous logits."""

    def __post_init__(self) -> None:
        _check_choice("prompting", self.prompting, Prompting)
        if self.fine_channels < 0:
            raise InputError(f"fine_channels must be >= 0, got {self.fine_channels}")
        if self.fine_channels and not self.click_maps:
            raise InputError("fine_channels needs click_maps (the fine input is logits + maps)")
        if self.embed_dim % 3:
            raise InputError(
                f"prompt embed_dim must be divisible by 3 (x, y, z Fourier features), "
                f"got {self.embed_dim}"
            )
        if self.mask_in_chans % 4:
            raise InputError(f"mask_in_chans must be divisible by 4, got {self.mask_in_chans}")
        if self.click_map_sigma <= 0:
            raise InputError(f"click_map_sigma must be positive, got {self.click_map_sigma}")


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """Mask decoder: two-way transformer, 2x2 transposed-conv upscaling x2, hypernetwork heads."""

    transformer_dim: int = 384
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    layer_norm_eps: float = 1e-5
    attn_impl: AttentionImpl = "sdpa"
    sparse: SparseAttentionConfig | None = None
    """Sparse attention for the token-to-image cross-attentions (keys = image tokens)."""
    upscale_channels: tuple[int, ...] = ()
    """Widths of the two upscaling stages (``2G`` and ``4G``); empty: ``D/4, D/8`` (upstream).
    The last one is the width of the hypernetwork outputs."""
    image_features: bool = False
    """Add the encoder's high-resolution features (``EncoderConfig.feature_channels``) after
    each upscaling stage (SAM 2's decoder), so masks can follow edges inside a ``16^3`` patch."""
    feature_gates: bool = False
    """Scale the image features by learned per-channel gates that start at zero
    (``feature_gate8``, ``feature_gate4``): the decoder first learns from the ViT's embedding
    and lets the features in as they help (without gates they become a shortcut that leaves
    the ViT unused; experiments e03-e08). Needs ``image_features``."""
    refine_with_features: bool = False
    """Keep the image features (and the fine prompt) out of the upscaling: decode each mask from
    the ViT's embedding and the dense prompt, then correct it from the features with a small
    conv net whose last layer starts at zero (:mod:`fastsam3d.modeling.feature_refiner`), so
    the features refine the ViT's mask instead of replacing it. Needs ``image_features``; not
    with ``feature_gates``."""
    click_similarity: bool = False
    """Feed the decoder each token's cosine similarity to the clicked tokens of the ViT's
    embedding (:mod:`fastsam3d.modeling.similarity`), so a mask can follow the tissue a click
    lies in beyond its surroundings. Every path it adds starts at zero."""
    similarity_logits: bool = True
    """With ``click_similarity``: also add the maps to each mask's logits, weighted by that
    mask's token (experiment e25; e24 ran without it)."""
    fine_stage: bool = False
    """A third upscaling stage to ``8G`` (``S/2``: 64^3 logits for 128^3 regions, 3 mm at the
    usual 1.5 mm) fed by the encoder's ``S/2`` features (``EncoderConfig.fine_feature_channels``,
    also its width): the logits are the ``4G`` ones upsampled plus a correction from that stage,
    whose hypernetwork outputs start at zero (:mod:`fastsam3d.modeling.fine_stage`). At ``4G``
    (6 mm cells) a rib or a thin vessel is drawn only from well-calibrated logits of the few
    cells it crosses. Needs ``image_features``."""
    refine_channels: int = 0
    """Width of the detail refiner (0: none, as upstream). With it, :meth:`Sam3D.encode` packs
    the image's statistics on the logit grid into the embedding and a small dilated 3D conv net
    corrects each mask's logits from them (:mod:`fastsam3d.modeling.detail`)."""

    def __post_init__(self) -> None:
        _check_choice("attn_impl", self.attn_impl, AttentionImpl)
        if self.refine_channels < 0:
            raise InputError(f"refine_channels must be >= 0, got {self.refine_channels}")
        if self.click_similarity and self.refine_with_features:
            raise InputError(
                "click_similarity feeds the upscaling, which refine_with_features skips"
            )
        inner = self.transformer_dim // self.attention_downsample_rate
        if self.transformer_dim % self.num_heads or inner % self.num_heads:
            raise InputError(
                f"decoder dims {self.transformer_dim}/{inner} not divisible by "
                f"{self.num_heads} heads"
            )
        if self.transformer_dim % 8:
            raise InputError(f"transformer_dim must be divisible by 8, got {self.transformer_dim}")
        if self.upscale_channels and (
            len(self.upscale_channels) != 2 or min(self.upscale_channels) < 1
        ):
            raise InputError(f"upscale_channels must be two widths, got {self.upscale_channels}")

    @property
    def upscale_widths(self) -> tuple[int, int]:
        """``(channels at 2G, channels at 4G)`` of the upscaling stages."""
        if self.upscale_channels:
            return self.upscale_channels[0], self.upscale_channels[1]
        return self.transformer_dim // 4, self.transformer_dim // 8


Normalization = Literal["zscore_positive", "none"]
"""``zscore_positive``: subtract the mean and divide by the standard deviation of the region's
voxels > 0 (upstream's ``ZNormalization(x > 0)``); ``none``: the image is already normalised."""


@dataclass(frozen=True, slots=True)
class InputConfig:
    """The model's input contract: what its weights were trained to see and how its output
    reads. Sessions, training and evaluation take the frame and the threshold from here (the
    region size is the encoder's ``img_size``, the prompting mode ``prompt.prompting``).

    Attributes:
        spacing: isotropic voxel size of the region in mm (1.5 for every released model).
        normalization: intensity normalisation of the region.
        mask_threshold: a voxel is foreground where the upsampled logit exceeds this (0:
            sigmoid > 0.5, as upstream reads its masks).
    """

    spacing: float = 1.5
    normalization: Normalization = "zscore_positive"
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not self.spacing > 0:
            raise InputError(f"input.spacing must be positive (mm), got {self.spacing}")
        _check_choice("input.normalization", self.normalization, Normalization)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A whole promptable model: image encoder + prompt encoder + mask decoder, and the input
    contract of its weights."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prompt: PromptEncoderConfig = field(default_factory=PromptEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def __post_init__(self) -> None:
        if self.encoder.out_chans != self.prompt.embed_dim:
            raise InputError(
                f"encoder.out_chans ({self.encoder.out_chans}) must equal prompt.embed_dim "
                f"({self.prompt.embed_dim})"
            )
        if self.prompt.embed_dim != self.decoder.transformer_dim:
            raise InputError(
                f"prompt.embed_dim ({self.prompt.embed_dim}) must equal "
                f"decoder.transformer_dim ({self.decoder.transformer_dim})"
            )
        widths = self.decoder.upscale_widths
        if self.decoder.image_features and tuple(self.encoder.feature_channels) != widths:
            raise InputError(
                f"decoder.image_features needs encoder.feature_channels equal to the decoder's "
                f"upscale widths {widths}, got {self.encoder.feature_channels}"
            )
        if self.encoder.feature_channels and not self.decoder.image_features:
            raise InputError("encoder.feature_channels are set but decoder.image_features is off")
        if self.decoder.feature_gates and not self.decoder.image_features:
            raise InputError("decoder.feature_gates needs decoder.image_features")
        if self.decoder.refine_with_features and not self.decoder.image_features:
            raise InputError("decoder.refine_with_features needs decoder.image_features")
        if self.decoder.refine_with_features and self.decoder.feature_gates:
            raise InputError(
                "decoder.refine_with_features and decoder.feature_gates exclude each other "
                "(the features never enter the upscaling that the gates scale)"
            )
        if self.prompt.fine_channels and self.prompt.fine_channels != widths[1]:
            raise InputError(
                f"prompt.fine_channels ({self.prompt.fine_channels}) must equal the decoder's "
                f"last upscale width ({widths[1]})"
            )
        fine = self.encoder.fine_feature_channels
        if self.decoder.fine_stage != bool(fine):
            raise InputError(
                f"decoder.fine_stage ({self.decoder.fine_stage}) and "
                f"encoder.fine_feature_channels ({fine}) come together"
            )
        if self.decoder.fine_stage and not (self.decoder.image_features and self.prompt.click_maps):
            raise InputError(
                "decoder.fine_stage needs decoder.image_features and prompt.click_maps"
            )
        if self.decoder.fine_stage and (
            self.decoder.refine_with_features or self.decoder.refine_channels
        ):
            raise InputError("decoder.fine_stage does not combine with the refiners")
        if self.decoder.sparse is not None:
            self.decoder.sparse.check(
                self.encoder.grid_size**3, self.decoder.num_heads, "decoder", segmented=False
            )

    @property
    def image_size(self) -> int:
        return self.encoder.img_size

    @property
    def embedding_grid(self) -> int:
        """Side of the image embedding grid (8 for the released models)."""
        return self.encoder.grid_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits: 4x the embedding grid (32 for 128^3), 8x
        with ``decoder.fine_stage``."""
        return (8 if self.decoder.fine_stage else 4) * self.encoder.grid_size

    def with_attention(
        self,
        attn_impl: AttentionImpl | None = None,
        encoder_sparse: SparseAttentionConfig | Literal["keep"] | None = "keep",
        decoder_sparse: SparseAttentionConfig | Literal["keep"] | None = "keep",
    ) -> ModelConfig:
        """Return a copy with another attention implementation and/or sparse attention."""
        enc, dec = self.encoder, self.decoder
        if attn_impl is not None:
            enc = dataclasses.replace(enc, attn_impl=attn_impl)
            dec = dataclasses.replace(dec, attn_impl=attn_impl)
        if encoder_sparse != "keep":
            enc = dataclasses.replace(enc, sparse=encoder_sparse)
        if decoder_sparse != "keep":
            dec = dataclasses.replace(dec, sparse=decoder_sparse)
        return dataclasses.replace(self, encoder=enc, decoder=dec)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-safe: tuples become lists)."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return _from_plain(cls, data, "model_config")


def _check_choice(name: str, value: object, literal: object) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise InputError(f"{name} must be one of {allowed}, got {value!r}")


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def dataclass_from_dict(
    cls: type[_T],
    data: Any,
    where: str,
    nested: Mapping[str, Callable[[Any, str], Any]] | None = None,
    *,
    check_choices: bool = False,
) -> _T:
    """``cls(**data)`` for a dataclass, from parsed TOML/JSON, with errors that name the place.

    Lists become tuples (one level of nested lists too); ``nested[key](value, where.key)``
    converts sub-tables; ``check_choices`` checks ``Literal`` fields against their choices.

    Raises:
        InputError: not a mapping, unknown keys (the allowed ones listed), a value outside a
            ``Literal``'s choices, or arguments ``cls`` rejects.
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a table, got {data!r}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls) if check_choices else {}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        convert = (nested or {}).get(key)
        if convert is not None:
            kwargs[key] = convert(value, f"{where}.{key}")
        elif isinstance(value, list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[key] = value
        hint = hints.get(key)
        allowed = get_args(hint) if typing.get_origin(hint) is Literal else ()
        if allowed and kwargs[key] not in allowed:
            raise InputError(f"{where}.{key}: must be one of {list(allowed)}, got {value!r}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None


def _from_plain(cls: type[_T], data: Any, where: str) -> _T:
    nested = {
        name: _sub_converter(sub) for (owner, name), sub in _SUBCONFIGS.items() if owner is cls
    }
    return dataclass_from_dict(cls, data, where, nested)


def _sub_converter(sub: type) -> Callable[[Any, str], Any]:
    """How a nested config table becomes its dataclass."""
    if sub is SparseAttentionConfig:
        return lambda value, where: None if value is None else _sparse_from_plain(value, where)
    return lambda value, where: _from_plain(sub, value, where)


def _sparse_from_plain(data: Any, where: str) -> SparseAttentionConfig:
    if not isinstance(data, dict) or set(data) != {"patterns"}:
        raise InputError(f"{where}: expected {{'patterns': [...]}}, got {data!r}")
    patterns = tuple(_from_plain(SparsePattern, p, f"{where}.patterns") for p in data["patterns"])
    return SparseAttentionConfig(patterns=patterns)


_SUBCONFIGS: dict[tuple[type, str], type] = {
    (ModelConfig, "encoder"): EncoderConfig,
    (ModelConfig, "prompt"): PromptEncoderConfig,
    (ModelConfig, "decoder"): DecoderConfig,
    (ModelConfig, "input"): InputConfig,
    (EncoderConfig, "sparse"): SparseAttentionConfig,
    (DecoderConfig, "sparse"): SparseAttentionConfig,
}
