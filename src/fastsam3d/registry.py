"""Named model architectures.

A name describes an architecture and the block formula its weights need; runtime choices
(attention implementation, sparse attention, dtype, device) are arguments of
:func:`fastsam3d.build_model` / :func:`fastsam3d.load_model`, never new names.

There are no URLs and no downloads: users pass the path of a checkpoint they own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .config import DecoderConfig, EncoderConfig, InputConfig, ModelConfig, PromptEncoderConfig
from .errors import InputError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: registry name.
        config: the architecture.
        description: one line for ``fastsam3d models``.
        fits: upstream checkpoint files this entry loads (informative).
        weights: file name of weights bundled in ``fastsam3d/weights`` (``None``: bring your own).
        weights_sha256: their checksum, verified when they are loaded.
        trained_on: bundled samples (:mod:`fastsam3d.samples`) the bundled weights were trained on;
            the others are held out.
    """

    name: str
    config: ModelConfig
    description: str
    fits: tuple[str, ...] = ()
    weights: str | None = None
    weights_sha256: str | None = None
    trained_on: tuple[str, ...] = ()

    @property
    def input(self) -> InputConfig:
        """The input contract of the entry's weights (region spacing, normalisation, mask
        threshold; the region size is ``config.image_size``, prompting ``config.prompt``)."""
        return self.config.input

    def bundled_weights(self) -> Path | None:
        """Path of the bundled weights (``None`` when the entry has none)."""
        return None if self.weights is None else WEIGHTS_DIR / self.weights


_TEACHER = EncoderConfig()  # SAM-Med3D vit_b_ori: 12 blocks, 768 wide, 14^3 windows, prenorm
_STUDENT = EncoderConfig(
    depth=6,
    num_heads=6,
    window_size=0,
    global_attn_indexes=(),
    attn_free_blocks=2,
    block_formula="fastsam3d",
)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Folder of the weights shipped inside the package."""

# fastsam3d-lite (v4 weights): a conv stem before the ViT whose S/8 and S/4 maps also reach the
# decoder's upscaling (SAM 2 style) through per-channel gates that start closed, LayerScale in
# the ViT's blocks, tokens centred before the neck (so the embedding carries what differs
# across the region), the mask input (previous logits + click maps) added at full logit
# resolution, and all clicks of the region sent with every prediction
_LITE_PROMPT = PromptEncoderConfig(
    embed_dim=96,
    mask_in_chans=16,
    swap_pe_axes=False,
    click_maps=True,
    fine_channels=16,
    prompting="all",
)
_LITE_DECODER = DecoderConfig(
    transformer_dim=96,
    num_heads=4,
    mlp_dim=512,
    iou_head_hidden_dim=128,
    upscale_channels=(32, 16),
    image_features=True,
    feature_gates=True,
)
_LITE_TEACHER = EncoderConfig(
    embed_dim=256,
    depth=12,
    num_heads=8,
    window_size=0,
    global_attn_indexes=(),
    out_chans=96,
    stem_channels=(24, 48),
    feature_channels=(32, 16),
    layer_scale_init=0.1,
    center_tokens=True,
)
_LITE_STUDENT = replace(  # FastSAM3D's layout
    _STUDENT,
    embed_dim=192,
    out_chans=96,
    stem_channels=(24, 48),
    feature_channels=(32, 16),
    layer_scale_init=0.1,
    center_tokens=True,
)
_TINY_PROMPT = PromptEncoderConfig(embed_dim=48, mask_in_chans=8)
_TINY_DECODER = DecoderConfig(transformer_dim=48, num_heads=4, mlp_dim=96, iou_head_hidden_dim=32)

DEFAULT_MODEL = "fastsam3d-lite"
"""The entry whose weights ship in the package: what runs when no model is named."""

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "sam-med3d",
            ModelConfig(encoder=_TEACHER),
            "SAM-Med3D ViT-B teacher (12 blocks, 14^3 padded windows, standard pre-norm blocks)",
            ("sam_med3d.pth", "sam_med3d_turbo.pth", "SAM-Med3D-organ / -brain"),
        ),
        ModelSpec(
            "fastsam3d-teacher",
            ModelConfig(encoder=EncoderConfig(block_formula="fastsam3d")),
            "SAM-Med3D ViT-B run with FastSAM3D's block formula (FastSAM3D's fine-tuned teacher)",
            ("Finetuned-SAMMED3D (FastSAM3D release)",),
        ),
        ModelSpec(
            "fastsam3d",
            ModelConfig(encoder=_STUDENT),
            "FastSAM3D 6-layer student (blocks 0-1 MLP-only, 2-5 global attention, 6 heads)",
            ("fastsam3d.pth / FastSAM3D.pth", "6layers6heads_student (encoder only)"),
        ),
        ModelSpec(
            "fastsam3d-lite-teacher",
            ModelConfig(encoder=_LITE_TEACHER, prompt=_LITE_PROMPT, decoder=_LITE_DECODER),
            "Our open teacher: conv stem + 12 global blocks, width 256, gated stem features in "
            "the decoder (trained here, see MODEL_CARD.md)",
        ),
        ModelSpec(
            "fastsam3d-lite",
            ModelConfig(encoder=_LITE_STUDENT, prompt=_LITE_PROMPT, decoder=_LITE_DECODER),
            "Our open default: conv stem + 6 blocks (2 MLP-only), width 192, distilled here; "
            "weights bundled",
            weights="fastsam3d-lite.safetensors",
            weights_sha256="2f5ee442d2c65da34ac8cbe51ae02351f973f4a2863d6a1e745d1d3f48c4dad1",
            trained_on=("ct", "ct_sm", "mr"),
        ),
        ModelSpec(
            "test-tiny",
            ModelConfig(
                encoder=EncoderConfig(
                    img_size=32,
                    patch_size=8,
                    embed_dim=32,
                    depth=2,
                    num_heads=4,
                    window_size=6,
                    global_attn_indexes=(1,),
                    out_chans=48,
                ),
                prompt=_TINY_PROMPT,
                decoder=_TINY_DECODER,
            ),
            "CI only: 32^3 input, teacher layout (padded 6^3 window block + global block)",
        ),
        ModelSpec(
            "test-tiny-student",
            ModelConfig(
                encoder=EncoderConfig(
                    img_size=32,
                    patch_size=8,
                    embed_dim=32,
                    depth=4,
                    num_heads=4,
                    window_size=0,
                    global_attn_indexes=(),
                    attn_free_blocks=2,
                    block_formula="fastsam3d",
                    out_chans=48,
                ),
                prompt=_TINY_PROMPT,
                decoder=_TINY_DECODER,
            ),
            "CI only: 32^3 input, student layout (2 MLP-only + 2 global blocks, FastSAM3D formula)",
        ),
        ModelSpec(
            "test-tiny-hires",
            ModelConfig(
                encoder=EncoderConfig(
                    img_size=64,
                    patch_size=16,
                    embed_dim=32,
                    depth=2,
                    num_heads=4,
                    window_size=0,
                    global_attn_indexes=(),
                    out_chans=48,
                    stem_channels=(8, 16),
                    feature_channels=(12, 8),
                ),
                prompt=replace(
                    _TINY_PROMPT,
                    click_maps=True,
                    fine_channels=8,
                    swap_pe_axes=False,
                    prompting="all",
                ),
                decoder=replace(_TINY_DECODER, upscale_channels=(12, 8), image_features=True),
            ),
            "CI only: 64^3 input, the lite layout in miniature (conv stem, high-resolution "
            "features, fine prompt path, all clicks)",
        ),
    )
}


def list_models() -> list[str]:
    """Registry names, e.g. ``["fastsam3d", "fastsam3d-teacher", "sam-med3d", ...]``."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; known models: {list_models()}") from None
