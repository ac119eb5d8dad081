"""The five 2D baselines of FastSAM3D's Table 2 / Table 3, and where each fact about them came from.

Parameter counts are of the whole model (image encoder + prompt encoder + mask decoder), with the
TinyViT classifier head that the published MobileSAM / TinySAM files carry. Published numbers:

- SAM ViT-B: 93.7M in total (Kirillov et al. 2023 / the segment-anything builder: 89.67M
  encoder + 4.06M prompt encoder and decoder); MedSAM is that model fine-tuned (Ma et al. 2024),
  same architecture and key layout (``sam_model_registry["vit_b"]`` loads ``medsam_vit_b.pth``
  strictly).
- MobileSAM (Zhang et al. 2023, ChaoningZhang/MobileSAM ``build_sam_vit_t``): image encoder
  "5.78M" in the paper (ours: 5.74M without the unused classifier head, 6.07M with it); the
  TinyViT paper's 5.4M for TinyViT-5M as a classifier is ours minus SAM's neck. TinySAM (Shu et
  al. 2023, xinghaochen/TinySAM ``build_sam_vit_t``) uses the same TinyViT-5M, builder, keys.
- SAM-Med2D (Cheng et al. 2023, OpenGVLab/SAM-Med2D): 271M in the paper's model table; from the
  architecture: SAM ViT-B at 256 input (pos_embed 16x16, global rel-pos 31 rows) plus 12 adapters
  of 15.04M each (3x3 conv 768^2*9 + 4x4 transposed conv 768^2*16 + 2*768*192 + LayerNorm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import InputError
from .contract import Preprocessing2D
from .models import MultimaskRule, SamFamily2D


@dataclass(frozen=True)
class Spec2D:
    """A registry entry: how to build the model and what its authors published."""

    name: str
    title: str
    input_size: int
    preprocessing: Preprocessing2D
    encoder: Callable[[], nn.Module]
    published_params: str
    checkpoint_file: str
    layouts: str
    source: str
    multimask_rule: MultimaskRule = "sam"
    flexible_input: bool = False

    def build(self) -> SamFamily2D:
        """The model with fresh (framework-default) weights, on the current default device."""
        return SamFamily2D(
            self.name,
            self.encoder(),
            self.input_size,
            self.preprocessing,
            multimask_rule=self.multimask_rule,
            flexible_input=self.flexible_input,
        )


def _sam_vit_b_encoder() -> nn.Module:
    from functools import partial

    import torch

    from ._sam_import import sam_modeling

    encoder: nn.Module = sam_modeling().ImageEncoderViT(
        img_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        out_chans=256,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
    )
    return encoder


def _tinyvit_encoder() -> nn.Module:
    from .tinyvit import TinyViT

    return TinyViT()


def _sam_med2d_encoder() -> nn.Module:
    from .adapters import sam_med2d_encoder

    return sam_med2d_encoder(256)


_SAM_SOURCE = (
    "segment-anything 1.0 (PyPI): build_sam.py _build_sam / build_sam_vit_b; the architecture "
    "is the package's own classes"
)
_TINYVIT_SOURCE = (
    "ChaoningZhang/MobileSAM mobile_sam/build_sam.py build_sam_vit_t and "
    "mobile_sam/modeling/tiny_vit_sam.py (module names, hyper-parameters, strict load with "
    "num_classes=1000, stride-1 last merge); TinySAM: xinghaochen/TinySAM tinysam/build_sam.py "
    "(identical builder, strict bare load) and tinysam/modeling/mask_decoder.py (always the 3 "
    "multimask outputs)"
)

MODELS_2D: dict[str, Spec2D] = {
    spec.name: spec
    for spec in (
        Spec2D(
            "sam-vit-b",
            "Meta SAM ViT-B",
            1024,
            "sam",
            _sam_vit_b_encoder,
            "93.7M (SAM paper / segment-anything builder)",
            "sam_vit_b_01ec64.pth",
            "bare state dict (image_encoder.*, prompt_encoder.*, mask_decoder.*)",
            _SAM_SOURCE,
        ),
        Spec2D(
            "medsam",
            "MedSAM (SAM ViT-B fine-tuned on medical images)",
            1024,
            "medsam",
            _sam_vit_b_encoder,
            "93.7M (same architecture as SAM ViT-B)",
            "medsam_vit_b.pth",
            "bare state dict as SAM's; MedSAM's training checkpoints wrap it in "
            "{'model': ..., 'optimizer': optimizer.state_dict(), 'epoch': ...}",
            "bowang-lab/MedSAM: loads medsam_vit_b.pth with segment-anything's vit_b builder "
            "(strict); train_one_gpu.py saves {'model', 'optimizer', 'epoch'}",
        ),
        Spec2D(
            "mobilesam",
            "MobileSAM (TinyViT-5M encoder)",
            1024,
            "sam",
            _tinyvit_encoder,
            "image encoder 5.78M (MobileSAM paper), whole pipeline 9.66M",
            "mobile_sam.pt",
            "bare state dict; image_encoder.* is TinyViT incl. norm_head/head",
            _TINYVIT_SOURCE,
            flexible_input=True,
        ),
        Spec2D(
            "tinysam",
            "TinySAM (TinyViT-5M encoder, distilled)",
            1024,
            "sam",
            _tinyvit_encoder,
            "as MobileSAM (same TinyViT-5M encoder and keys)",
            "tinysam_42.3.pth (tinysam.pth); not the quantized tinysam_w8a8.pth (a pickled model)",
            "bare state dict, MobileSAM's keys",
            _TINYVIT_SOURCE,
            multimask_rule="tinysam",
            flexible_input=True,
        ),
        Spec2D(
            "sam-med2d",
            "SAM-Med2D (SAM ViT-B with adapters, 256 x 256)",
            256,
            "sam-med2d",
            _sam_med2d_encoder,
            "271M (SAM-Med2D paper); 271.2M from the architecture",
            "sam-med2d_b.pth",
            "training checkpoint {'model': state dict, 'optimizer': torch.optim.Adam object} "
            "(train.py saves the optimizer object itself: read with it discarded, see "
            "load.py); a bare state dict also loads",
            "OpenGVLab/SAM-Med2D segment_anything/build_sam.py (image_size 256, "
            "encoder_adapter=True, 'model' wrapper), segment_anything/modeling/image_encoder.py "
            "(Adapter_Layer, Block), train.py (checkpoint contents)",
        ),
    )
}
"""Registry of the 2D baselines by name."""


def get_spec_2d(name: str) -> Spec2D:
    """The entry for ``name``; :class:`InputError` naming the choices otherwise."""
    try:
        return MODELS_2D[name]
    except KeyError:
        raise InputError(
            f"unknown 2D model {name!r}; choose one of {', '.join(sorted(MODELS_2D))}"
        ) from None
