"""The five 2D baselines: architecture facts, published key layouts, safe loading, the contract.

Where the facts come from (see ``fastsam3d/sam2d/registry.py`` for the full list):

- SAM ViT-B / MedSAM: Meta's ``segment-anything`` 1.0 builder (the architecture is its classes);
  the SAM paper's 93.7M; MedSAM loads ``medsam_vit_b.pth`` with that builder strictly.
- MobileSAM / TinySAM: ``ChaoningZhang/MobileSAM`` ``build_sam_vit_t`` + ``tiny_vit_sam.py`` and
  ``xinghaochen/TinySAM`` (same builder; decoder always returns the 3 multimask outputs); the
  TinyViT paper's 5.4M for TinyViT-5M as an ImageNet classifier (our encoder minus SAM's neck);
  MobileSAM's paper: image encoder 5.78M; key names also seen in bowang-lab/MedSAM issue #272
  (``image_encoder.patch_embed.seq.0.c.weight``, ``...layers.0.blocks.0.conv1.c.weight``).
- SAM-Med2D: ``OpenGVLab/SAM-Med2D`` ``build_sam.py`` (256 input, adapters, ``'model'`` wrapper),
  ``image_encoder.py`` (``Adapter_Layer``), ``train.py`` (saves the optimizer object); 271M.

Models are built on the meta device for shapes and counts; weights for the slow (ViT) models come
from files whose tensors all view one small storage (torch.save writes it once), so the big
models load without drawing 271M random numbers. Regenerate the manifest with
``FASTSAM3D_WRITE_MANIFEST=1 pytest tests/sam2d``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from fastsam3d.checkpoint import UnsafeCheckpointError, read_checkpoint
from fastsam3d.errors import InputError
from fastsam3d.sam2d import (
    MODELS_2D,
    CheckpointMismatchError2D,
    PromptableModel2D,
    build_meta_2d,
    load_model_2d,
    read_checkpoint_2d,
)
from fastsam3d.sam2d._sam_import import sam_modeling, sam_module
from fastsam3d.sam2d.models import SamFamily2D
from fastsam3d.sam2d.tinyvit import WindowAttention

MANIFEST = Path(__file__).with_name("manifests.json")
SAME_AS = {"medsam": "sam-vit-b", "tinysam": "mobilesam"}
ROOT = Path(__file__).resolve().parents[2]

# name: (total parameters, image-encoder parameters), counted from our architecture
COUNTS = {
    "sam-vit-b": (93_735_472, 89_670_912),
    "medsam": (93_735_472, 89_670_912),
    "mobilesam": (10_130_092, 6_065_532),
    "tinysam": (10_130_092, 6_065_532),
    "sam-med2d": (271_241_776, 267_177_216),
}
TINYVIT_HEAD = 320 * 1000 + 1000 + 2 * 320  # head Linear(320, 1000) + norm_head
TINYVIT_NECK = 320 * 256 + 256 * 256 * 9 + 2 * 2 * 256


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _shared_storage_state(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict in ``model``'s layout whose tensors all view one small random storage."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    largest = max(s.numel() for s in shapes.values())
    base = torch.rand(largest, generator=gen) * 0.04 + 0.01  # positive: safe for running_var
    return {k: base[: s.numel()].view(s) for k, s in shapes.items()}


# -- the segment-anything import helper ---------------------------------------------------


def test_modeling_imports_without_torchvision() -> None:
    """segment_anything's __init__ needs torchvision; our helper imports the model classes
    alone, even with torchvision made unimportable."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class NoTorchvision(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torchvision":
                    raise ImportError("torchvision blocked for this test")
        sys.meta_path.insert(0, NoTorchvision())
        try:
            import segment_anything  # noqa: F401  (runs the package __init__)
        except ImportError as err:
            print("full package:", type(err).__name__)
        for name in [m for m in sys.modules if m.startswith("segment_anything")]:
            del sys.modules[name]
        from fastsam3d.sam2d._sam_import import sam_modeling, BARE_MARKER
        modeling = sam_modeling()
        assert modeling.ImageEncoderViT and modeling.MaskDecoder and modeling.Sam
        assert getattr(sys.modules["segment_anything"], BARE_MARKER)
        assert not any(m.startswith("torchvision") for m in sys.modules)
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "full package: ImportError" in out.stdout
    assert out.stdout.strip().endswith("ok")


def test_helper_returns_the_same_module() -> None:
    assert sam_modeling() is sam_modeling()
    assert sam_module("common").LayerNorm2d is sam_modeling().common.LayerNorm2d


# -- architecture facts -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS_2D))
def test_parameter_counts(name: str) -> None:
    model = build_meta_2d(name)
    total, encoder = COUNTS[name]
    assert _numel(model) == total
    assert _numel(model.image_encoder) == encoder
    assert _numel(model.prompt_encoder) == 6_220  # SAM's, the same in all five
    assert _numel(model.mask_decoder) == 4_058_340


def test_parameter_counts_match_published_numbers() -> None:
    """Published: SAM ViT-B 93.7M (SAM paper); TinyViT-5M 5.4M as a classifier (TinyViT
    paper); MobileSAM image encoder 5.78M (MobileSAM paper); SAM-Med2D 271M (its paper)."""
    assert round(COUNTS["sam-vit-b"][0] / 1e6, 1) == 93.7
    tiny_encoder = COUNTS["mobilesam"][1]
    assert round((tiny_encoder - TINYVIT_NECK) / 1e6, 1) == 5.4  # classifier: no neck, with head
    assert abs((tiny_encoder - TINYVIT_HEAD) / 5.78e6 - 1) < 0.01  # SAM encoder: neck, no head
    assert round(COUNTS["sam-med2d"][0] / 1e6) == 271
    # SAM-Med2D = SAM ViT-B at 256 input + 12 adapters (computed from the published modules):
    adapter = 768 * 192 * 2 + 768 * 768 * 9 + 768 * 768 * 16 + 2 * 768
    pos_embed_change = (16 * 16 - 64 * 64) * 768
    global_rel_pos_change = 4 * 2 * (31 - 127) * 64  # blocks 2, 5, 8, 11: rel_pos_h and _w
    expected = COUNTS["sam-vit-b"][0] + 12 * adapter + pos_embed_change + global_rel_pos_change
    assert COUNTS["sam-med2d"][0] == expected


def _write_manifest() -> None:
    data: dict[str, Any] = {"same_as": SAME_AS}
    for name in sorted(MODELS_2D):
        if name not in SAME_AS:
            data[name] = _shapes(build_meta_2d(name))
    lines = ["{"]
    items = list(data.items())
    for i, (name, table) in enumerate(items):
        lines.append(f"  {json.dumps(name)}: {{")
        entries = list(table.items())
        for j, (key, value) in enumerate(entries):
            comma = "," if j < len(entries) - 1 else ""
            lines.append(f"    {json.dumps(key)}: {json.dumps(value)}{comma}")
        lines.append("  }" + ("," if i < len(items) - 1 else ""))
    lines.append("}")
    MANIFEST.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", sorted(MODELS_2D))
def test_state_dict_matches_manifest(name: str) -> None:
    if os.environ.get("FASTSAM3D_WRITE_MANIFEST"):
        _write_manifest()
    manifest = json.loads(MANIFEST.read_text())
    expected = manifest[manifest["same_as"].get(name, name)]
    assert _shapes(build_meta_2d(name)) == expected


SPOT_CHECKS = {
    "sam-vit-b": {
        "image_encoder.patch_embed.proj.weight": [768, 3, 16, 16],
        "image_encoder.pos_embed": [1, 64, 64, 768],
        "image_encoder.blocks.0.attn.rel_pos_h": [27, 64],  # window 14
        "image_encoder.blocks.2.attn.rel_pos_h": [127, 64],  # global at 64 x 64 tokens
        "image_encoder.neck.0.weight": [256, 768, 1, 1],
        "image_encoder.neck.2.weight": [256, 256, 3, 3],
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": [2, 128],
        "prompt_encoder.mask_downscaling.3.weight": [16, 4, 2, 2],
        "mask_decoder.mask_tokens.weight": [4, 256],
        "mask_decoder.iou_prediction_head.layers.2.weight": [4, 256],
    },
    "mobilesam": {
        "image_encoder.patch_embed.seq.0.c.weight": [32, 3, 3, 3],
        "image_encoder.patch_embed.seq.0.bn.running_var": [32],
        "image_encoder.patch_embed.seq.2.c.weight": [64, 32, 3, 3],
        "image_encoder.layers.0.blocks.0.conv1.c.weight": [256, 64, 1, 1],
        "image_encoder.layers.0.blocks.0.conv2.c.weight": [256, 1, 3, 3],
        "image_encoder.layers.0.downsample.conv2.c.weight": [128, 1, 3, 3],
        "image_encoder.layers.1.blocks.0.attn.attention_biases": [4, 49],
        "image_encoder.layers.1.blocks.0.attn.qkv.weight": [384, 128],
        "image_encoder.layers.1.blocks.0.mlp.norm.weight": [128],
        "image_encoder.layers.2.blocks.5.attn.attention_biases": [5, 196],
        "image_encoder.layers.2.downsample.conv1.c.weight": [320, 160, 1, 1],
        "image_encoder.layers.3.blocks.1.attn.attention_biases": [10, 49],
        "image_encoder.layers.3.blocks.1.local_conv.c.weight": [320, 1, 3, 3],
        "image_encoder.norm_head.weight": [320],
        "image_encoder.head.weight": [1000, 320],
        "image_encoder.neck.0.weight": [256, 320, 1, 1],
        "image_encoder.neck.1.weight": [256],
        "mask_decoder.output_upscaling.0.weight": [256, 64, 2, 2],
    },
    "sam-med2d": {
        "image_encoder.pos_embed": [1, 16, 16, 768],
        "image_encoder.blocks.0.attn.rel_pos_h": [27, 64],
        "image_encoder.blocks.11.attn.rel_pos_w": [31, 64],  # global at 16 x 16 tokens
        "image_encoder.blocks.0.Adapter.channel.0.weight": [192, 768],
        "image_encoder.blocks.0.Adapter.channel.2.weight": [768, 192],
        "image_encoder.blocks.0.Adapter.spatial.0.weight": [768, 768, 3, 3],
        "image_encoder.blocks.0.Adapter.spatial.2.weight": [768, 768, 4, 4],
        "image_encoder.blocks.11.Adapter.norm.bias": [768],
        "prompt_encoder.no_mask_embed.weight": [1, 256],
    },
}


@pytest.mark.parametrize("name", sorted(SPOT_CHECKS))
def test_well_known_keys(name: str) -> None:
    shapes = _shapes(build_meta_2d(name))
    for key, shape in SPOT_CHECKS[name].items():
        assert shapes[key] == shape, key
    assert not any("attention_bias_idxs" in k for k in shapes)  # not saved upstream either
    assert not any(k.startswith("pixel_") for k in shapes)  # SAM's are not persistent


def test_layouts_agree_with_segment_anything_builder() -> None:
    """segment-anything's own vit_b builder takes our SAM / MedSAM state dict strictly."""
    build_sam = sam_module("image_encoder")  # ensure the bare package is registered
    del build_sam
    import importlib

    builder = importlib.import_module("segment_anything.build_sam")
    with torch.device("meta"):
        reference = builder.build_sam_vit_b(None)
    ours = {k: tuple(v.shape) for k, v in build_meta_2d("medsam").state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


# -- loading ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """MobileSAM-layout weights from a seeded random model (BatchNorm statistics sensible)."""
    return load_model_2d("mobilesam", random_weights=True, seed=5).state_dict()


def _assert_loaded(model: SamFamily2D, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key in list(state)[:: max(1, len(state) // 25)]:
        assert torch.equal(own[key], state[key]), key


@pytest.mark.parametrize("name", ["mobilesam", "tinysam"])
@pytest.mark.parametrize("counters", [True, False])
def test_tinyvit_bare_layout_loads(
    name: str, counters: bool, tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = dict(tiny_state)
    if not counters:  # files written without BatchNorm's num_batches_tracked load too
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    model = load_model_2d(name, path)
    _assert_loaded(model, state)
    assert not model.training


@pytest.fixture(scope="module")
def sam_med2d(tmp_path_factory: pytest.TempPathFactory) -> SamFamily2D:
    """SAM-Med2D loaded from a file in its published layout: {'model': ..., 'optimizer': Adam}."""
    state = _shared_storage_state(build_meta_2d("sam-med2d"), torch.Generator().manual_seed(1))
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    sum((p**2).sum() for p in params).backward()  # type: ignore[union-attr]
    optimizer.step()  # Adam now holds per-parameter state, as in the published file
    path = tmp_path_factory.mktemp("sam-med2d") / "sam-med2d_b.pth"
    torch.save({"model": state, "optimizer": optimizer}, path)
    model = load_model_2d("sam-med2d", path)
    _assert_loaded(model, state)
    return model


def test_sam_med2d_training_layout_loads(sam_med2d: SamFamily2D) -> None:
    assert sam_med2d.input_size == 256
    assert sam_med2d.mask_size == 64


def test_optimizer_object_is_discarded_not_run(tmp_path: Path) -> None:
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = torch.optim.Adam(params)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"mask_decoder.x": torch.ones(1)}, "optimizer": optimizer}, path)
    with pytest.raises(UnsafeCheckpointError):  # the package's reader refuses the object ...
        read_checkpoint(path)
    state = read_checkpoint_2d(path)  # ... the 2D reader takes it as an inert stand-in
    assert list(state) == ["mask_decoder.x"]


@pytest.mark.parametrize("layout", ["bare", "medsam-training", "module-prefix"])
def test_vit_b_layouts_load(layout: str, tmp_path: Path) -> None:
    state = _shared_storage_state(build_meta_2d("sam-vit-b"), torch.Generator().manual_seed(2))
    obj: Any = state
    if layout == "medsam-training":  # MedSAM's train_one_gpu.py
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
        obj = {"model": state, "optimizer": opt.state_dict(), "epoch": 3}
    elif layout == "module-prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    for name in ("sam-vit-b", "medsam"):
        _assert_loaded(load_model_2d(name, path), state)


class NotATensor:
    pass


def test_bad_checkpoints_give_clear_errors(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    missing = {k: v for k, v in tiny_state.items() if "head.weight" not in k}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(
        CheckpointMismatchError2D,
        match=r"'mobilesam'.*\n.*missing keys: "
        r"image_encoder\.head\.weight",
    ):
        load_model_2d("mobilesam", tmp_path / "missing.pt")

    shaped = {**tiny_state, "image_encoder.layers.1.blocks.0.attn.attention_biases": torch.zeros(4)}
    torch.save(shaped, tmp_path / "shape.pt")
    with pytest.raises(
        CheckpointMismatchError2D,
        match=r"wrong shape keys: .*attention_biases: "
        r"checkpoint \(4,\), model \(4, 49\)",
    ):
        load_model_2d("mobilesam", tmp_path / "shape.pt")

    torch.save({**tiny_state, "image_encoder.extra": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointMismatchError2D, match=r"unexpected keys: image_encoder\.extra"):
        load_model_2d("tinysam", tmp_path / "extra.pt")

    with pytest.raises(CheckpointMismatchError2D, match="fit: mobilesam, tinysam"):
        load_model_2d("sam-vit-b", _saved(tiny_state, tmp_path / "wrong-model.pt"))

    torch.save({"model": tiny_state, "note": NotATensor()}, tmp_path / "pickle.pt")
    with pytest.raises(UnsafeCheckpointError, match="NotATensor"):
        load_model_2d("mobilesam", tmp_path / "pickle.pt")


def _saved(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_random_weights_policy(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no bundled weights.*mobile_sam\.pt.*random_weights"):
        load_model_2d("mobilesam")
    with pytest.raises(InputError, match="takes no checkpoint"):
        load_model_2d("mobilesam", tmp_path / "x.pt", random_weights=True)
    with pytest.raises(InputError, match=r"unknown 2D model 'sam'.*mobilesam"):
        load_model_2d("sam", random_weights=True)
    a = load_model_2d("tinysam", random_weights=True, seed=1).state_dict()
    b = load_model_2d("tinysam", random_weights=True, seed=1).state_dict()
    c = load_model_2d("tinysam", random_weights=True, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_encoder.head.weight"], c["image_encoder.head.weight"])


# -- the contract and equality with segment-anything -------------------------------------


@pytest.fixture(scope="module")
def mobilesam() -> SamFamily2D:
    return load_model_2d("mobilesam", random_weights=True, seed=3)


@pytest.fixture(scope="module")
def tinysam(mobilesam: SamFamily2D, tmp_path_factory: pytest.TempPathFactory) -> SamFamily2D:
    path = tmp_path_factory.mktemp("tinysam") / "tinysam.pth"
    torch.save(mobilesam.state_dict(), path)
    return load_model_2d("tinysam", path)


def test_models_satisfy_the_contract(mobilesam: SamFamily2D, sam_med2d: SamFamily2D) -> None:
    for model, size, prep in ((mobilesam, 1024, "sam"), (sam_med2d, 256, "sam-med2d")):
        assert isinstance(model, PromptableModel2D)
        assert model.input_size == size
        assert model.mask_size == size // 4
        assert model.preprocessing == prep
        assert model.device == torch.device("cpu")
        assert model.dtype == torch.float32
    assert build_meta_2d("medsam").preprocessing == "medsam"


def _reference_decoder(model: SamFamily2D) -> tuple[Any, Any]:
    """segment-anything's PromptEncoder / MaskDecoder configured as the authors' builders do,
    with ``model``'s weights (loaded strictly)."""
    modeling = sam_modeling()
    side = model.input_size
    pe = modeling.PromptEncoder(
        embed_dim=256,
        image_embedding_size=(side // 16, side // 16),
        input_image_size=(side, side),
        mask_in_chans=16,
    )
    dec = modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8
        ),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    pe.load_state_dict(model.prompt_encoder.state_dict(), strict=True)
    dec.load_state_dict(model.mask_decoder.state_dict(), strict=True)
    return pe.eval(), dec.eval()


def _prompts(side: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    m = side // 4
    return {
        "points": torch.rand(2, 3, 2, generator=gen) * side,
        "labels": torch.tensor([[1, 0, 1], [1, 1, 0]]),
        "boxes": torch.tensor([[10.0, 20.0, side / 2, side / 3], [5.0, 5.0, side - 9, side - 1]]),
        "mask_logits": torch.randn(2, 1, m, m, generator=gen),
    }


@torch.no_grad()
@pytest.mark.parametrize("which", ["mobilesam", "sam-med2d"])
@pytest.mark.parametrize("multimask", [False, True])
def test_decode_equals_segment_anything(
    which: str, multimask: bool, mobilesam: SamFamily2D, sam_med2d: SamFamily2D
) -> None:
    model = mobilesam if which == "mobilesam" else sam_med2d
    pe, dec = _reference_decoder(model)
    gen = torch.Generator().manual_seed(4)
    side = model.input_size
    embedding = torch.randn(1, 256, side // 16, side // 16, generator=gen)
    p = _prompts(side, gen)
    sparse, dense = pe(points=(p["points"], p["labels"]), boxes=p["boxes"], masks=p["mask_logits"])
    ref_logits, ref_iou = dec(embedding, pe.get_dense_pe(), sparse, dense, multimask)
    logits, iou = model.decode(embedding, **p, multimask=multimask)
    m = 3 if multimask else 1
    assert logits.shape == (2, m, side // 4, side // 4)
    assert iou.shape == (2, m)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(iou, ref_iou)


@torch.no_grad()
def test_decode_batches_of_embeddings(sam_med2d: SamFamily2D) -> None:
    gen = torch.Generator().manual_seed(5)
    embeddings = torch.randn(2, 256, 16, 16, generator=gen)
    points = torch.rand(2, 1, 2, generator=gen) * 256
    labels = torch.ones(2, 1)
    logits, iou = sam_med2d.decode(embeddings, points, labels)
    first, _ = sam_med2d.decode(embeddings[:1], points[:1], labels[:1])
    torch.testing.assert_close(logits[:1], first)
    assert logits.shape == (2, 1, 64, 64)
    assert iou.shape == (2, 1)
    with pytest.raises(InputError, match="points and labels"):
        sam_med2d.decode(embeddings, points)


@torch.no_grad()
def test_tinysam_single_mask_is_the_best_of_three(tinysam: SamFamily2D) -> None:
    gen = torch.Generator().manual_seed(6)
    embedding = torch.randn(1, 256, 64, 64, generator=gen)
    boxes = torch.tensor([[100.0, 200.0, 600.0, 500.0], [0.0, 0.0, 50.0, 80.0]])
    three, iou3 = tinysam.decode(embedding, boxes=boxes, multimask=True)
    one, iou1 = tinysam.decode(embedding, boxes=boxes, multimask=False)
    assert three.shape == (2, 3, 256, 256)
    assert one.shape == (2, 1, 256, 256)
    best = iou3.argmax(1)
    torch.testing.assert_close(one[:, 0], three[torch.arange(2), best])
    torch.testing.assert_close(iou1[:, 0], iou3.max(1).values)


@torch.no_grad()
def test_encode_shapes(mobilesam: SamFamily2D, sam_med2d: SamFamily2D) -> None:
    gen = torch.Generator().manual_seed(7)
    emb = sam_med2d.encode(torch.randn(1, 3, 256, 256, generator=gen))
    assert emb.shape == (1, 256, 16, 16)
    assert torch.isfinite(emb).all()
    emb = mobilesam.encode(torch.randn(2, 3, 128, 128, generator=gen))  # TinyViT: any 64k side
    assert emb.shape == (2, 256, 8, 8)
    assert torch.isfinite(emb).all()
    with pytest.raises(InputError, match=r"expected a prepared input \(B, 3, 256, 256\)"):
        sam_med2d.encode(torch.zeros(1, 3, 128, 128))
    with pytest.raises(InputError):
        mobilesam.encode(torch.zeros(1, 3, 100, 100))


@pytest.mark.slow
@torch.no_grad()
def test_vit_b_full_size_forward(tmp_path: Path) -> None:
    """The one 1024 x 1024 ViT-B forward of this file (pos_embed fixes 64 x 64 tokens)."""
    state = _shared_storage_state(build_meta_2d("sam-vit-b"), torch.Generator().manual_seed(8))
    torch.save(state, tmp_path / "sam.pth")
    model = load_model_2d("sam-vit-b", tmp_path / "sam.pth")
    emb = model.encode(torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(9)))
    assert emb.shape == (1, 256, 64, 64)
    assert torch.isfinite(emb).all()
    logits, iou = model.decode(emb, torch.tensor([[[512.0, 300.0]]]), torch.tensor([[1]]))
    assert logits.shape == (1, 1, 256, 256)
    assert iou.shape == (1, 1)


# -- the parts written here ---------------------------------------------------------------


@torch.no_grad()
def test_window_attention_matches_a_naive_reading() -> None:
    """Per head: q.k / sqrt(d) + bias[offset id], offsets numbered by first appearance over
    row-major (query, key) pairs, and qkv laid out per head as [q | k | v]."""
    gen = torch.Generator().manual_seed(10)
    attn = WindowAttention(dim=8, num_heads=2, window=3)
    for p in attn.parameters():
        p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(1, 9, 8, generator=gen)
    points = [(r, c) for r in range(3) for c in range(3)]
    ids: dict[tuple[int, int], int] = {}
    for p1 in points:
        for p2 in points:
            ids.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(ids))
    qkv = attn.qkv(attn.norm(x))[0].view(9, 2, 12)
    heads = []
    for h in range(2):
        q, k, v = qkv[:, h, :4], qkv[:, h, 4:8], qkv[:, h, 8:]
        scores = q @ k.T / 2.0
        for i, p1 in enumerate(points):
            for j, p2 in enumerate(points):
                scores[i, j] += attn.attention_biases[
                    h, ids[abs(p1[0] - p2[0]), abs(p1[1] - p2[1])]
                ]
        heads.append(scores.softmax(-1) @ v)
    expected = attn.proj(torch.cat(heads, dim=-1))[None]
    torch.testing.assert_close(attn(x), expected)


@torch.no_grad()
def test_adapter_block_reuses_segment_anything_block(sam_med2d: SamFamily2D) -> None:
    """With its adapter switched off, SAM-Med2D's block is segment-anything's ``Block``."""
    encoder = sam_module("image_encoder")
    ours = sam_med2d.image_encoder.blocks[2]  # a global-attention block
    reference = encoder.Block(
        dim=768,
        num_heads=12,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=0,
        input_size=(16, 16),
    )
    reference.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if not k.startswith("Adapter.")}
    )
    x = torch.randn(1, 16, 16, 768, generator=torch.Generator().manual_seed(11))
    adapter = ours.Adapter
    try:
        ours.Adapter = _Zero()
        torch.testing.assert_close(ours(x), reference(x))
    finally:
        ours.Adapter = adapter
    normed = ours.norm2(x + ours.attn(ours.norm1(x)))
    gate = torch.sigmoid(adapter.channel[2](torch.relu(adapter.channel[0](normed.mean((1, 2))))))
    maps = normed.permute(0, 3, 1, 2)
    spatial = adapter.spatial(maps * gate[:, :, None, None])
    expected = adapter.norm((maps + spatial).permute(0, 2, 3, 1))
    torch.testing.assert_close(adapter(normed), expected)


class _Zero(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)
