"""Dilated ("3D sparse flash") attention against dense attention and a brute-force reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastsam3d
from fastsam3d.config import SparseAttentionConfig, SparsePattern
from fastsam3d.modeling import relpos
from fastsam3d.modeling.sparse_attention import (
    dilated_cross_attention,
    dilated_self_attention,
    sparse_positions,
)


def _brute_force(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: list[torch.Tensor],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Explicit boolean masks ``(H, Nq, Nk)`` per pattern; patterns combine as one softmax over
    the union of their keys *with multiplicity* (= LongNet's denominator weighting); a query no
    pattern selects gets zero."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    count = torch.stack(allowed).sum(0).to(q.dtype)  # (H, Nq, Nk) multiplicity
    top = scores.masked_fill(count == 0, float("-inf")).amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = count * torch.exp(scores - top)
    total = weights.sum(-1, keepdim=True)
    return (weights @ v) / torch.where(total > 0, total, torch.ones_like(total))


def _self_masks(n: int, heads: int, patterns: list[SparsePattern]) -> list[torch.Tensor]:
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    masks = []
    for p in patterns:
        w, r = p.segment_length, p.dilation
        per_head = []
        for h in range(heads):
            off = h % r
            per_head.append((i // w == j // w) & (i % r == off) & (j % r == off))
        masks.append(torch.stack(per_head))
    return masks


def _qkv(b: int, h: int, n: int, c: int, gen: torch.Generator, dtype=torch.float64):
    return tuple(torch.randn(b, h, n, c, generator=gen, dtype=dtype) for _ in range(3))


def test_full_segment_without_dilation_is_dense_attention_exactly(gen: torch.Generator) -> None:
    q, k, v = _qkv(2, 4, 64, 8, gen, torch.float32)
    dense = F.scaled_dot_product_attention(q, k, v)
    sparse = dilated_self_attention(q, k, v, [SparsePattern(64, 1)])
    assert torch.equal(sparse, dense)


@pytest.mark.parametrize(
    ("heads", "patterns"),
    [
        (4, [(16, 1)]),
        (4, [(64, 4)]),
        (6, [(32, 2)]),
        (3, [(64, 2)]),
        (4, [(16, 1), (32, 2), (64, 4)]),
        (6, [(64, 1), (64, 2)]),
        (2, [(8, 2), (64, 2)]),
    ],
)
def test_self_attention_equals_brute_force(heads: int, patterns, gen: torch.Generator) -> None:
    n, c = 64, 8
    pats = [SparsePattern(w, r) for w, r in patterns]
    q, k, v = _qkv(2, heads, n, c, gen)
    want = _brute_force(q, k, v, _self_masks(n, heads, pats))
    got = dilated_self_attention(q, k, v, pats)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_eager_and_sdpa_sparse_paths_agree(impl: str, gen: torch.Generator) -> None:
    pats = [SparsePattern(16, 2), SparsePattern(64, 4)]
    q, k, v = _qkv(2, 4, 64, 8, gen)
    want = _brute_force(q, k, v, _self_masks(64, 4, pats))
    torch.testing.assert_close(dilated_self_attention(q, k, v, pats, impl=impl), want)


def test_self_attention_with_relative_bias_equals_brute_force(gen: torch.Generator) -> None:
    g, heads, c = 4, 4, 6
    n = g**3
    q, k, v = _qkv(1, heads, n, c, gen)
    tables = [torch.randn(2 * g - 1, c, generator=gen, dtype=torch.float64) for _ in range(3)]
    terms = relpos.rel_pos_terms(q.unflatten(2, (g, g, g)), *tables, key_extent=g)
    pats = [SparsePattern(16, 2), SparsePattern(64, 4)]
    want = _brute_force(q, k, v, _self_masks(n, heads, pats), relpos.dense_bias(terms))
    got = dilated_self_attention(
        q, k, v, pats, bias_fn=lambda qi, ki: relpos.gather_bias(terms, qi, ki)
    )
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dilations", [[1], [2], [4], [2, 4], [1, 2, 4]])
def test_cross_attention_equals_brute_force(dilations: list[int], gen: torch.Generator) -> None:
    heads, m, n, c = 4, 7, 64, 8
    q = torch.randn(2, heads, m, c, generator=gen, dtype=torch.float64)
    _, k, v = _qkv(2, heads, n, c, gen)
    j = torch.arange(n)
    masks = [torch.stack([(j % r == h % r).expand(m, n) for h in range(heads)]) for r in dilations]
    pats = [SparsePattern(n, r) for r in dilations]
    torch.testing.assert_close(dilated_cross_attention(q, k, v, pats), _brute_force(q, k, v, masks))


def test_every_token_is_selected_by_some_head() -> None:
    pos = sparse_positions(512, SparsePattern(128, 4), num_heads=6, device=torch.device("cpu"))
    assert pos.shape == (6, 4, 32)
    assert set(pos.flatten().tolist()) == set(range(512))
    for h in range(6):  # within a head, positions are distinct
        assert pos[h].unique().numel() == pos[h].numel()


def test_gradients_flow_through_mixed_patterns(gen: torch.Generator) -> None:
    q, k, v = (t.float().requires_grad_() for t in _qkv(1, 4, 64, 8, gen))
    out = dilated_self_attention(q, k, v, [SparsePattern(16, 1), SparsePattern(64, 4)])
    out.square().sum().backward()
    for t in (q, k, v):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_gradients_match_brute_force(gen: torch.Generator) -> None:
    pats = [SparsePattern(16, 2), SparsePattern(64, 4)]
    base = _qkv(1, 4, 64, 8, gen)
    grads = []
    for fn in (
        lambda q, k, v: dilated_self_attention(q, k, v, pats),
        lambda q, k, v: _brute_force(q, k, v, _self_masks(64, 4, pats)),
    ):
        leaves = [t.clone().requires_grad_() for t in base]
        fn(*leaves).sin().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_sparse_encoder_and_decoder_train_end_to_end(gen: torch.Generator) -> None:
    cfg = fastsam3d.get_spec("test-tiny-student").config.with_attention(
        encoder_sparse=SparseAttentionConfig((SparsePattern(16, 1), SparsePattern(64, 4))),
        decoder_sparse=SparseAttentionConfig((SparsePattern(64, 2),)),
    )
    model = fastsam3d.build_model(cfg, seed=0)
    image = torch.randn(2, 1, 32, 32, 32, generator=gen)
    points = torch.randint(0, 32, (2, 2, 3), generator=gen).float()
    labels = torch.tensor([[1, 0], [1, 1]])
    logits, iou = model(image, points, labels)  # no mask prompt: uses no_mask_embed
    prev = torch.randn(2, 1, 16, 16, 16, generator=gen)  # mask prompt: uses mask_downscaling
    logits2, iou2 = model(image, points, labels, mask_logits=prev, multimask=True)
    (logits.mean() + iou.mean() + logits2.mean() + iou2.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sparse_attention_changes_the_function_of_dense_weights(gen: torch.Generator) -> None:
    dense = fastsam3d.load_model("test-tiny-student", seed=5, random_weights=True)
    sparse = fastsam3d.load_model(
        "test-tiny-student",
        seed=5,
        sparse=SparseAttentionConfig((SparsePattern(64, 4),)),
        random_weights=True,
    )
    image = torch.randn(1, 1, 32, 32, 32, generator=gen)
    with torch.inference_mode():
        assert not torch.allclose(dense.encode(image), sparse.encode(image))


def test_sparse_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="multiple of dilation"):
        SparsePattern(10, 4)
    with pytest.raises(ValueError, match="does not divide"):
        fastsam3d.get_spec("test-tiny").config.with_attention(
            encoder_sparse=SparseAttentionConfig((SparsePattern(48, 2),))
        )
    with pytest.raises(ValueError, match="attended by no head"):
        fastsam3d.get_spec("test-tiny").config.with_attention(
            encoder_sparse=SparseAttentionConfig((SparsePattern(64, 8),))
        )
    with pytest.raises(ValueError, match="dilation 3 does not divide the 64 keys"):
        fastsam3d.get_spec("test-tiny").config.with_attention(
            decoder_sparse=SparseAttentionConfig((SparsePattern(3, 3),))
        )
    with pytest.raises(ValueError, match="at least one pattern"):
        SparseAttentionConfig(())
