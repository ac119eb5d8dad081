"""The low-level API: load_model, encode, decode (shapes, semantics, validation)."""

from __future__ import annotations

import pytest
import torch

import fastsam3d
from fastsam3d.modeling.sam3d import Sam3D

from .conftest import tiny_inputs


def test_load_model_random_init_is_in_eval_mode_on_cpu() -> None:
    model = fastsam3d.load_model("test-tiny", random_weights=True)
    assert not model.training
    assert model.device == torch.device("cpu")
    assert model.dtype == torch.float32


def test_no_silent_random_weights(capsys) -> None:
    """A model without bundled weights needs a checkpoint or an explicit request for random
    weights, in the library and on the command line."""
    from fastsam3d.cli import main
    from fastsam3d.errors import InputError

    with pytest.raises(InputError, match=r"no bundled weights.*random_weights=True"):
        fastsam3d.load_model("fastsam3d")
    with pytest.raises(InputError, match="no checkpoint"):
        fastsam3d.load_model("test-tiny", "x.pth", random_weights=True)
    assert fastsam3d.load_model("fastsam3d-lite").cfg.encoder.depth == 6  # bundled: fine
    image = str(samples_ct())
    assert (
        main(["segment", image, "--model", "fastsam3d", "--point", "1,2,3", "--out", "m.nii.gz"])
        == 2
    )
    assert "has no bundled weights" in capsys.readouterr().err


def samples_ct() -> object:
    from fastsam3d import samples

    return samples.sample("ct").image


@pytest.mark.parametrize("multimask", [False, True])
def test_encode_decode_shapes(tiny_model: Sam3D, gen: torch.Generator, multimask: bool) -> None:
    image, points, labels = tiny_inputs(tiny_model, gen, batch=2)
    with torch.inference_mode():
        emb = tiny_model.encode(image)
        logits, iou = tiny_model.decode(emb, points, labels, multimask=multimask)
        prev = logits[:, :1]
        logits2, _ = tiny_model.decode(emb, points, labels, mask_logits=prev)
    assert emb.shape == (2, 48, 4, 4, 4)
    k = 3 if multimask else 1
    assert logits.shape == (2, k, 16, 16, 16)
    assert iou.shape == (2, k)
    assert logits2.shape == (2, 1, 16, 16, 16)


def test_shared_embedding_serves_several_prompt_sets(tiny_model: Sam3D, gen) -> None:
    image, points, labels = tiny_inputs(tiny_model, gen, batch=3)
    with torch.inference_mode():
        emb = tiny_model.encode(image[:1])
        together, iou = tiny_model.decode(emb, points, labels)
        for i in range(3):
            alone, iou_i = tiny_model.decode(emb, points[i : i + 1], labels[i : i + 1])
            torch.testing.assert_close(together[i : i + 1], alone)
            torch.testing.assert_close(iou[i : i + 1], iou_i)


def test_pad_labels_and_zero_mask_change_the_result(tiny_model: Sam3D, gen) -> None:
    image, points, labels = tiny_inputs(tiny_model, gen)
    with torch.inference_mode():
        emb = tiny_model.encode(image)
        base, _ = tiny_model.decode(emb, points, labels)
        ignored = tiny_model.decode(emb, points, torch.full_like(labels, -1))[0]
        zero_mask = tiny_model.decode(emb, points, labels, torch.zeros(1, 1, 16, 16, 16))[0]
    assert not torch.allclose(base, ignored)
    assert not torch.allclose(base, zero_mask)  # masks=zeros != masks=None (docs/upstream.md U5)


def test_points_with_label_minus_one_are_ignored(tiny_model: Sam3D, gen) -> None:
    image, points, labels = tiny_inputs(tiny_model, gen)
    with torch.inference_mode():
        emb = tiny_model.encode(image)
        base = tiny_model.decode(emb, points, labels)[0]
        moved = points.clone()
        extra_pt = torch.cat([moved, torch.tensor([[[5.0, 6.0, 7.0]]])], dim=1)
        extra_lb = torch.cat([labels, torch.tensor([[-1]])], dim=1)
        other = torch.cat([moved, torch.tensor([[[20.0, 1.0, 9.0]]])], dim=1)
        a = tiny_model.decode(emb, extra_pt, extra_lb)[0]
        b = tiny_model.decode(emb, other, extra_lb)[0]
    torch.testing.assert_close(a, b)  # where an ignored point sits does not matter
    assert a.shape == base.shape


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"points": torch.zeros(1, 3)}, r"points must be \(B, N, 3\)"),
        ({"labels": torch.zeros(1, 2, dtype=torch.long)}, r"labels must be \(B, N\)"),
        ({"labels": torch.ones(1, 3)}, "labels must be integers"),
        ({"labels": torch.tensor([[1, 2, 0]])}, r"labels must be -1, 0 or 1, got \[2\]"),
        (
            {"mask_logits": torch.zeros(1, 1, 32, 32, 32)},
            r"mask_logits must be \(1, 1, 16, 16, 16\)",
        ),
        ({"embedding": torch.zeros(1, 48, 8, 8, 8)}, r"embedding must be \(B, 48, 4, 4, 4\)"),
        ({"embedding": torch.zeros(2, 48, 4, 4, 4)}, "embedding batch 2 does not match 1"),
    ],
)
def test_decode_rejects_bad_inputs(tiny_model: Sam3D, change: dict, match: str) -> None:
    args = {
        "embedding": torch.zeros(1, 48, 4, 4, 4),
        "points": torch.zeros(1, 3, 3),
        "labels": torch.ones(1, 3, dtype=torch.long),
        "mask_logits": None,
    }
    args.update(change)
    with pytest.raises(ValueError, match=match):
        tiny_model.decode(**args)


def test_encode_rejects_wrong_image_size(tiny_model: Sam3D) -> None:
    with pytest.raises(
        ValueError, match=r"image must be \(B, 1, 32, 32, 32\), got \(1, 1, 30, 32, 32\)"
    ):
        tiny_model.encode(torch.zeros(1, 1, 30, 32, 32))


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = fastsam3d.build_model("test-tiny", seed=7)
    b = fastsam3d.build_model("test-tiny", seed=7)
    c = fastsam3d.build_model("test-tiny", seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.all(sa["image_encoder.blocks.0.attn.rel_pos_d"] == 0)  # rel_pos_zero_init


@pytest.mark.parametrize("name", ["test-tiny", "test-tiny-student"])
def test_forward_backward_reaches_every_parameter(name: str, gen: torch.Generator) -> None:
    model = fastsam3d.build_model(name, seed=0)
    image, points, labels = tiny_inputs(model, gen, batch=2)
    logits, iou = model(image, points, labels)
    logits2, iou2 = model(image, points, labels, torch.randn(2, 1, 16, 16, 16), multimask=True)
    (logits.square().mean() + iou.mean() + logits2.mean() + iou2.mean()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n


def test_forward_intermediates(tiny_student: Sam3D, gen: torch.Generator) -> None:
    image = torch.randn(1, 1, 32, 32, 32, generator=gen)
    enc = tiny_student.image_encoder
    with torch.inference_mode():
        emb, (e0, e2, e4) = enc.forward_intermediates(image, (0, 2, 4))
        torch.testing.assert_close(emb, enc(image))
        torch.testing.assert_close(e0, enc.embed(image))
        torch.testing.assert_close(enc.head(e4), emb)
        x = e0
        for block in enc.blocks[:2]:
            x = block(x)
        torch.testing.assert_close(x, e2)
    with pytest.raises(ValueError, match="depth 5 outside"):
        enc.forward_intermediates(image, (5,))


def test_bfloat16_model_runs_and_stays_close(tiny_model: Sam3D, gen: torch.Generator) -> None:
    image, points, labels = tiny_inputs(tiny_model, gen)
    half = fastsam3d.load_model("test-tiny", seed=3, dtype=torch.bfloat16, random_weights=True)
    with torch.inference_mode():
        ref = tiny_model.encode(image)
        emb = half.encode(image)
        logits, _ = half.decode(emb, points, labels)
    assert emb.dtype == torch.bfloat16
    assert logits.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(emb.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
