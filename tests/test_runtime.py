"""Runtime optimisations must compute the same function as the reference model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import fastsam3d
from fastsam3d.conformance import compare, fixtures, load_reference, run_scenarios
from fastsam3d.runtime import onednn

from .conftest import FIXTURES, tiny_inputs

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch without oneDNN kernels")


@pytest.mark.parametrize("name", ["test-tiny", "test-tiny-student"])
def test_packed_model_equals_reference(name: str, gen: torch.Generator) -> None:
    model = fastsam3d.load_model(name, seed=2, random_weights=True)
    fast = onednn.optimize_for_cpu(model)
    image, points, labels = tiny_inputs(model, gen, batch=2)
    with torch.inference_mode():
        emb, fast_emb = model.encode(image), fast.encode(image)
        torch.testing.assert_close(fast_emb, emb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            fast.decode(fast_emb, points, labels)[0],
            model.decode(emb, points, labels)[0],
            atol=1e-4,
            rtol=1e-4,
        )
    n_packed = sum(isinstance(m, onednn.PackedLinear) for m in fast.image_encoder.modules())
    assert n_packed == sum(isinstance(m, torch.nn.Linear) for m in model.image_encoder.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())  # original untouched


def test_packed_student_reproduces_upstream(tmp_path) -> None:
    (fx,) = [f for f in fixtures() if "student" in f.name]
    ref = load_reference(FIXTURES / fx.filename)
    from fastsam3d.conformance import fixture_state_dict, model_shapes, write_upstream_checkpoint

    path = write_upstream_checkpoint(
        tmp_path / "c.pth", fixture_state_dict(model_shapes(fx.config)), "full"
    )
    fast = onednn.optimize_for_cpu(fastsam3d.load_model("fastsam3d", path))
    rows = compare(run_scenarios(fast, ref, intermediates=False), ref)
    assert all(r.ok for r in rows), [(r.key, r.max_abs) for r in rows if not r.ok]


def test_refuses_unsupported_dtypes() -> None:
    model = fastsam3d.load_model("test-tiny", dtype=torch.float64, random_weights=True)
    with pytest.raises(ValueError, match="float32/bfloat16"):
        onednn.optimize_for_cpu(model)


# -- exported runtimes ---------------------------------------------------------------------------

from fastsam3d.runtime import exported as exported_module  # noqa: E402
from fastsam3d.runtime import select  # noqa: E402
from fastsam3d.runtime.exported import ExportedModel  # noqa: E402

needs_exports = pytest.mark.skipif(
    not (select.available("onnxruntime") and select.available("openvino")),
    reason="onnx / onnxruntime / openvino not installed",
)


@pytest.fixture(scope="module")
def fixture_models(tmp_path_factory):
    from fastsam3d.conformance import fixture_state_dict, model_shapes, write_upstream_checkpoint

    out = {}
    for fx in fixtures():
        path = write_upstream_checkpoint(
            tmp_path_factory.mktemp("w") / "c.pth",
            fixture_state_dict(model_shapes(fx.config)),
            "full",
        )
        out[fx.name] = (
            fastsam3d.load_model(fx.config, path),
            load_reference(FIXTURES / fx.filename),
        )
    return out, tmp_path_factory.mktemp("graphs")


def _outputs(model, ref):
    zeros = torch.zeros(1, 1, 32, 32, 32)
    with torch.inference_mode():
        emb = model.encode(ref["input"])
        b, b_iou = model.decode(emb, ref["points"], ref["labels"], zeros)
        c, _ = model.decode(emb, ref["points"], ref["labels"], b)
    return {
        "image_embedding": emb,
        "B_low_res_masks": b,
        "B_iou_predictions": b_iou,
        "C_low_res_masks": c,
    }


@needs_exports
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("which", ["fastsam3d student", "sam-med3d reduced teacher"])
def test_exported_fp32_graphs_reproduce_upstream(runtime, which, fixture_models) -> None:
    models, cache = fixture_models
    model, ref = models[which]
    fast = ExportedModel(model, runtime, cache_dir=cache)
    for key, value in _outputs(fast, ref).items():
        torch.testing.assert_close(value, ref[key], atol=1e-4, rtol=1e-4, msg=f"{runtime} {key}")


def _mask_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    up = lambda x: torch.nn.functional.interpolate(x, size=(128,) * 3, mode="trilinear") > 0  # noqa: E731
    ma, mb = up(a), up(b)
    return 2 * float((ma & mb).sum()) / float(ma.sum() + mb.sum())


@needs_exports
@pytest.mark.parametrize(
    ("runtime", "min_dice"), [("openvino-bf16", 0.99), ("onnxruntime-int8", 0.95)]
)
def test_reduced_precision_against_fp32(runtime, min_dice, fixture_models) -> None:
    models, cache = fixture_models
    model, ref = models["fastsam3d student"]
    want, got = _outputs(model, ref), _outputs(ExportedModel(model, runtime, cache_dir=cache), ref)
    cos = torch.nn.functional.cosine_similarity(
        got["image_embedding"].flatten(), want["image_embedding"].flatten(), dim=0
    )
    assert cos > 0.998
    assert _mask_dice(got["B_low_res_masks"], want["B_low_res_masks"]) >= min_dice


@needs_exports
def test_graphs_are_cached_and_fallbacks_use_torch(tmp_path, monkeypatch, gen) -> None:
    model = fastsam3d.load_model("test-tiny", seed=4, random_weights=True)
    ExportedModel(model, "onnxruntime", cache_dir=tmp_path)
    monkeypatch.setattr(
        exported_module.torch.onnx, "export", lambda *a, **k: pytest.fail("re-exported")
    )
    fast = ExportedModel(model, "openvino", cache_dir=tmp_path)
    image, points, labels = tiny_inputs(model, gen)
    with torch.inference_mode():
        emb = model.encode(image)
        for kwargs in ({"multimask": True, "mask_logits": torch.zeros(1, 1, 16, 16, 16)}, {}):
            torch.testing.assert_close(
                fast.decode(emb, points, labels, **kwargs),
                model.decode(emb, points, labels, **kwargs),
            )
    with pytest.raises(ValueError, match="labels must be -1, 0 or 1"):
        fast.decode(emb, points, labels * 2, mask_logits=torch.zeros(1, 1, 16, 16, 16))


def test_runtime_selection(monkeypatch) -> None:
    model = fastsam3d.load_model("test-tiny", random_weights=True)
    assert select.resolve("torch", model) == "torch"
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        select.resolve("tensorrt", model)
    monkeypatch.setattr(select, "cpu_has_native_bf16", lambda: False)
    assert select.resolve("auto", model) == ("onednn" if onednn.available() else "torch")
    if select.available("openvino-bf16"):
        monkeypatch.setattr(select, "cpu_has_native_bf16", lambda: True)
        assert select.resolve("auto", model) == "openvino-bf16"


@needs_exports
def test_session_prepares_the_runtime(tmp_path, monkeypatch) -> None:
    from fastsam3d.interactive.session import Session

    monkeypatch.setenv("FASTSAM3D_CACHE", str(tmp_path))
    model = fastsam3d.load_model("test-tiny", random_weights=True)
    assert isinstance(Session(model, runtime="openvino").model, ExportedModel)
    assert Session(model, runtime="torch").model is model


@needs_exports
def test_models_with_a_detail_refiner_run_on_every_runtime(tmp_path, gen) -> None:
    import dataclasses

    from fastsam3d.build import build_model
    from fastsam3d.registry import get_spec

    cfg = get_spec("test-tiny").config
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, refine_channels=8))
    model = build_model(cfg, seed=6).eval()
    refiner = model.mask_decoder.refiner
    assert refiner is not None
    torch.nn.init.normal_(refiner.out.weight, std=0.1, generator=gen)  # a non-trivial refiner
    image, points, labels = tiny_inputs(model, gen)
    zeros = torch.zeros(1, 1, 16, 16, 16)
    with torch.inference_mode():
        emb = model.encode(image)
        want = model.decode(emb, points, labels, zeros)[0]
        for fast in (
            onednn.optimize_for_cpu(model),
            ExportedModel(model, "onnxruntime", cache_dir=tmp_path),
            ExportedModel(model, "openvino", cache_dir=tmp_path),
        ):
            fast_emb = fast.encode(image)
            assert fast_emb.shape == emb.shape
            torch.testing.assert_close(fast_emb, emb, atol=1e-4, rtol=1e-4)
            got = fast.decode(fast_emb, points, labels, mask_logits=zeros)[0]
            torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


@needs_exports
@pytest.mark.parametrize("variant", ["v2", "v3", "refiner", "similarity", "fine_stage"])
def test_models_with_image_features_run_on_every_runtime(tmp_path, gen, variant) -> None:
    """The lite layout (conv stem, features packed into the embedding, fine prompt path) runs
    unchanged on every runtime; ``v3`` adds LayerScale, the attention distance bias, centred
    tokens and open feature gates; ``refiner`` decodes from the ViT and refines with the
    features; ``similarity`` adds the click-similarity prompt (and decodes another number of
    clicks than the graph was exported with); ``fine_stage`` returns logits at ``S/2`` and
    takes them back as the mask prompt."""
    model = fastsam3d.load_model("test-tiny-hires", seed=7, random_weights=True)
    if variant == "v3":
        cfg = model.cfg
        cfg = dataclasses.replace(
            cfg,
            encoder=dataclasses.replace(
                cfg.encoder, layer_scale_init=0.5, attn_distance_bias=True, center_tokens=True
            ),
            decoder=dataclasses.replace(cfg.decoder, feature_gates=True),
        )
        model = fastsam3d.build_model(cfg, seed=7).eval()
        with torch.no_grad():
            model.mask_decoder.feature_gate8.fill_(0.7)
            model.mask_decoder.feature_gate4.fill_(1.3)
    if variant == "refiner":
        cfg = model.cfg
        cfg = dataclasses.replace(
            cfg, decoder=dataclasses.replace(cfg.decoder, refine_with_features=True)
        )
        model = fastsam3d.build_model(cfg, seed=7).eval()
        refiner = model.mask_decoder.feature_refiner
        assert refiner is not None
        with torch.no_grad():
            refiner.out.weight.normal_(generator=torch.Generator().manual_seed(1))
    if variant == "similarity":
        cfg = model.cfg
        cfg = dataclasses.replace(
            cfg,
            decoder=dataclasses.replace(cfg.decoder, feature_gates=True, click_similarity=True),
        )
        model = fastsam3d.build_model(cfg, seed=7).eval()
        prompt = model.mask_decoder.similarity
        assert prompt is not None
        with torch.no_grad():
            model.mask_decoder.feature_gate8.fill_(0.7)
            model.mask_decoder.feature_gate4.fill_(1.3)
            prompt.coarse.weight.normal_(generator=torch.Generator().manual_seed(1))
            prompt.fine.weight.normal_(generator=torch.Generator().manual_seed(2))
    if variant == "fine_stage":
        cfg = model.cfg
        cfg = dataclasses.replace(
            cfg,
            encoder=dataclasses.replace(cfg.encoder, fine_feature_channels=4),
            decoder=dataclasses.replace(cfg.decoder, fine_stage=True),
        )
        model = fastsam3d.build_model(cfg, seed=7).eval()
        stage = model.mask_decoder.fine_stage
        assert stage is not None
        with torch.no_grad():
            for mlp in stage.hypernetworks:
                mlp.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(3))
    image, points, labels = tiny_inputs(model, gen, n_points=2)
    more_points = torch.cat([points, points.flip(2)], dim=1)
    more_labels = torch.tensor([[1, 0, 0, 1]])
    low = model.cfg.low_res_size
    zeros = torch.zeros(1, 1, low, low, low)
    with torch.inference_mode():
        emb = model.encode(image)
        want = model.decode(emb, points, labels, zeros)[0]
        for fast in (
            onednn.optimize_for_cpu(model),
            ExportedModel(model, "onnxruntime", cache_dir=tmp_path),
            ExportedModel(model, "openvino", cache_dir=tmp_path),
        ):
            fast_emb = fast.encode(image)
            assert fast_emb.shape == emb.shape
            torch.testing.assert_close(fast_emb, emb, atol=1e-4, rtol=1e-4)
            got = fast.decode(fast_emb, points, labels, mask_logits=want)[0]
            ref = model.decode(emb, points, labels, want)[0]
            torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
            if variant == "similarity":
                got = fast.decode(fast_emb, more_points, more_labels, mask_logits=want)[0]
                ref = model.decode(emb, more_points, more_labels, want)[0]
                torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
