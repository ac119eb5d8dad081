"""Loading every checkpoint layout upstream publishes, our native format, and refusing bad files."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

import fastsam3d
from fastsam3d.build import CheckpointMismatchError, matching_models
from fastsam3d.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from fastsam3d.conformance import write_upstream_checkpoint
from fastsam3d.modeling.sam3d import Sam3D


def _states_equal(a: Sam3D, b: Sam3D) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def source() -> Sam3D:
    return fastsam3d.build_model("test-tiny", seed=11)


@pytest.mark.parametrize("layout", ["training", "full", "ddp"])
def test_upstream_layouts_load_exactly(layout: str, source: Sam3D, tmp_path: Path) -> None:
    path = write_upstream_checkpoint(tmp_path / "ckpt.pth", source.state_dict(), layout)
    model = fastsam3d.load_model("test-tiny", path)
    assert not model.training
    assert _states_equal(model, source)


def test_training_checkpoint_report_names_what_was_ignored(source: Sam3D, tmp_path: Path) -> None:
    path = write_upstream_checkpoint(tmp_path / "ckpt.pth", source.state_dict(), "training")
    _, report = read_checkpoint(path)
    assert {"args", "optimizer_state_dict", "dices", "best_dice"} <= set(report.ignored_entries)
    assert report.files[0][2] == ("image_encoder", "prompt_encoder", "mask_decoder")


def test_ddp_prefix_is_reported(source: Sam3D, tmp_path: Path) -> None:
    path = write_upstream_checkpoint(tmp_path / "ckpt.pth", source.state_dict(), "ddp")
    assert read_checkpoint(path)[1].stripped_prefix


def test_bare_encoder_combined_with_a_second_file(tmp_path: Path) -> None:
    """FastSAM3D's release: a bare student encoder + prompt encoder/decoder from another file
    (here a teacher-layout model, whose own encoder does not fit and is skipped)."""
    student = fastsam3d.build_model("test-tiny-student", seed=1)
    teacher = fastsam3d.build_model("test-tiny", seed=2)
    enc = write_upstream_checkpoint(
        tmp_path / "student_encoder.pth", student.state_dict(), "encoder"
    )
    full = write_upstream_checkpoint(tmp_path / "teacher.pth", teacher.state_dict(), "training")
    assert all(not k.startswith("image_encoder") for k in torch.load(enc, weights_only=True))

    model = fastsam3d.load_model("test-tiny-student", [enc, full])
    got = model.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith("image_encoder."):
            assert torch.equal(got[key], value), key
    for key, value in teacher.state_dict().items():
        if not key.startswith("image_encoder."):
            assert torch.equal(got[key], value), key
    _, report = read_checkpoint([enc, full])
    assert report.files[0][2] == ("image_encoder",)
    assert report.files[1][2] == ("prompt_encoder", "mask_decoder")
    assert report.skipped
    assert all(k.startswith("image_encoder.") for k in report.skipped)


def test_bare_encoder_alone_names_the_missing_parts(tmp_path: Path) -> None:
    student = fastsam3d.build_model("test-tiny-student", seed=1)
    enc = write_upstream_checkpoint(tmp_path / "enc.pth", student.state_dict(), "encoder")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: mask_decoder\."):
        fastsam3d.load_model("test-tiny-student", enc)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_native_format_round_trip_carries_the_config(
    suffix: str, source: Sam3D, tmp_path: Path
) -> None:
    path = fastsam3d.save_native(
        tmp_path / f"model{suffix}", source.state_dict(), source.cfg, "test-tiny"
    )
    model = fastsam3d.load_model(None, path)
    assert model.cfg == source.cfg
    assert _states_equal(model, source)
    if suffix == ".pt":  # plain weights_only load works without any allow-list
        assert torch.load(path, weights_only=True)["model_name"] == "test-tiny"


def test_native_checkpoint_with_a_broken_config(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(
        {"x": torch.zeros(1)}, str(path), metadata={"format": "fastsam3d", "model_config": "{"}
    )
    with pytest.raises(CheckpointError, match="invalid model_config"):
        fastsam3d.load_model(None, path)


def test_native_checkpoint_for_another_architecture_is_refused(
    source: Sam3D, tmp_path: Path
) -> None:
    path = fastsam3d.save_native(
        tmp_path / "m.safetensors", source.state_dict(), source.cfg, "test-tiny"
    )
    with pytest.raises(CheckpointMismatchError, match="written for model 'test-tiny'"):
        fastsam3d.load_model("test-tiny-student", path)


def test_half_precision_checkpoint_loads_into_float32(source: Sam3D, tmp_path: Path) -> None:
    half = {k: v.half() for k, v in source.state_dict().items()}
    path = write_upstream_checkpoint(tmp_path / "half.pth", half, "full")
    model = fastsam3d.load_model("test-tiny", path)
    assert model.dtype == torch.float32
    for key, value in model.state_dict().items():
        assert torch.equal(value, half[key].float())


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


class _Custom:
    pass


@pytest.mark.parametrize("payload", ["code", "class"])
def test_arbitrary_pickled_objects_are_refused_never_executed(
    payload: str, source: Sam3D, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    extra = _Payload(marker) if payload == "code" else _Custom()
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": source.state_dict(), "extra": extra}, path)
    expected = r"io\.open" if payload == "code" else "_Custom"  # builtins.open is io.open
    with pytest.raises(UnsafeCheckpointError, match=expected) as err:
        fastsam3d.load_model("test-tiny", path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_wrong_and_unexpected_keys_are_named(source: Sam3D, tmp_path: Path) -> None:
    state = source.state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["prompt_encoder.point_embeddings.2.weight"] = torch.zeros(1, 48)  # CVPR25 box layout
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 8, 32)
    path = write_upstream_checkpoint(tmp_path / "bad.pth", state, "full")
    with pytest.raises(CheckpointMismatchError) as err:
        fastsam3d.load_model("test-tiny", path)
    msg = str(err.value)
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: prompt_encoder.point_embeddings.2.weight" in msg
    assert "image_encoder.pos_embed: checkpoint (1, 8, 8, 8, 32), model (1, 4, 4, 4, 32)" in msg


def test_mismatch_error_suggests_the_model_that_fits(tmp_path: Path) -> None:
    student = fastsam3d.build_model("test-tiny-student")
    path = write_upstream_checkpoint(tmp_path / "s.pth", student.state_dict(), "training")
    with pytest.raises(CheckpointMismatchError, match="shapes fit: test-tiny-student"):
        fastsam3d.load_model("test-tiny", path)


def test_full_size_teacher_shapes_are_ambiguous_between_block_formulas() -> None:
    shapes = fastsam3d.build.build_meta(fastsam3d.get_spec("sam-med3d").config).state_dict()
    state = {k: torch.zeros(()).expand(v.shape) for k, v in shapes.items()}
    assert matching_models(state) == ["fastsam3d-teacher", "sam-med3d"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a readable PyTorch checkpoint"),
        (b"hello, this is a text file\n", "not a readable PyTorch checkpoint"),
        (None, "not found"),
    ],
    ids=["empty", "corrupt", "text", "missing"],
)
def test_unreadable_files(content: bytes | None, match: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        fastsam3d.load_model("test-tiny", path)
    assert str(path) in str(err.value)


def test_truncated_real_checkpoint(source: Sam3D, tmp_path: Path) -> None:
    path = write_upstream_checkpoint(tmp_path / "ckpt.pth", source.state_dict(), "training")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ckpt\.pth"):
        fastsam3d.load_model("test-tiny", path)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        fastsam3d.load_model("test-tiny", path)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        (torch.zeros(3), "expected a dict"),
        ({}, "state dict is empty"),
        ({"weights": torch.zeros(2), "note": "x"}, "non-tensor entries"),
        ({"encoder.layer.0": torch.zeros(2)}, "unrecognised key layout"),
    ],
    ids=["tensor", "empty", "non-tensor", "foreign-layout"],
)
def test_malformed_contents(obj: object, match: str, tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=match):
        fastsam3d.load_model("test-tiny", path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_saved_weights_get_the_usual_file_mode(suffix: str, source: Sam3D, tmp_path: Path) -> None:
    """Not the private 0o600 of the temporary file (safetensors recreates the file it writes)."""
    import os
    import stat

    from fastsam3d.checkpoint import save_native

    path = save_native(tmp_path / f"m{suffix}", source.state_dict(), source.cfg, "test-tiny")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert _states_equal(fastsam3d.load_model(None, path), source)
