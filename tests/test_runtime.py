"""Runtime optimisations must compute the same function as the reference model."""

from __future__ import annotations

import pytest
import torch

import fastsam3d
from fastsam3d.conformance import compare, fixtures, load_reference, run_scenarios
from fastsam3d.runtime import onednn

from .conftest import FIXTURES, tiny_inputs

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch without oneDNN kernels")


@pytest.mark.parametrize("name", ["test-tiny", "test-tiny-student"])
def test_packed_model_equals_reference(name: str, gen: torch.Generator) -> None:
    model = fastsam3d.load_model(name, seed=2)
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
    model = fastsam3d.load_model("test-tiny", dtype=torch.float64)
    with pytest.raises(ValueError, match="float32/bfloat16"):
        onednn.optimize_for_cpu(model)
