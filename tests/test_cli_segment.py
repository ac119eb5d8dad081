"""``fastsam3d segment`` on the bundled scans, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import fastsam3d
from fastsam3d import samples
from fastsam3d.cli import main
from fastsam3d.data.io import read_volume


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    model = fastsam3d.build_model("test-tiny-student", seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return fastsam3d.save_native(path, model.state_dict(), model.cfg, "test-tiny-student")


def _segment(image, out, ckpt, *extra: str) -> int:
    return main(
        [
            "segment",
            str(image),
            "--checkpoint",
            str(ckpt),
            "--model",
            "test-tiny-student",
            "--out",
            str(out),
            "--threads",
            "2",
            *extra,
        ]
    )


def test_segment_sample_ct_keeps_the_input_geometry(tiny_ckpt, tmp_path, capsys) -> None:
    image = samples.sample("ct").image
    out = tmp_path / "mask.nii.gz"
    code = _segment(
        image,
        out,
        tiny_ckpt,
        "--point",
        "82,58,99",
        "--negative",
        "75,60,90",
        "--point",
        "85,55,100",
    )
    assert code == 0
    text = capsys.readouterr().out
    for stage in (
        "load image",
        "load model",
        "preprocess",
        "encode",
        "decode",
        "map back",
        "write",
    ):
        assert stage in text
    assert "click 3 (+)" in text
    assert "new region" in text
    src, res = nib.load(str(image)), nib.load(str(out))
    assert res.shape == src.shape
    np.testing.assert_array_equal(res.affine, src.affine)
    for key in ("qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "pixdim"):
        np.testing.assert_array_equal(res.header[key], src.header[key])
    assert set(np.unique(np.asanyarray(res.dataobj))) <= {0, 1}


def test_segment_dicom_series(tiny_ckpt, tmp_path, capsys) -> None:
    folder = samples.sample("ct_dicom").image
    out = tmp_path / "mask.nrrd"
    assert _segment(folder, out, tiny_ckpt, "--point", "256,300,10") == 0
    src, res = read_volume(folder), read_volume(out)
    assert res.shape == src.shape
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-9)
    assert src.source is not None
    assert res.source is not None
    assert res.source.itk_geometry == src.source.itk_geometry


def test_world_points_and_prompt_file(tiny_ckpt, tmp_path) -> None:
    image = samples.sample("ct").image
    volume = read_volume(image)
    world = volume.index_to_world(np.array([[82.0, 58.0, 99.0]]), "lps")[0]
    by_index, by_world, by_file = (tmp_path / f"{n}.nii.gz" for n in ("i", "w", "f"))
    exact = ("--runtime", "torch")  # a bit-for-bit comparison: the fp32 reference runtime
    assert _segment(image, by_index, tiny_ckpt, "--point", "82,58,99", *exact) == 0
    world_text = ",".join(repr(float(v)) for v in world)  # full precision: the same voxel
    assert (
        _segment(image, by_world, tiny_ckpt, "--world", "lps", "--point", world_text, *exact) == 0
    )
    prompt = tmp_path / "clicks.json"
    prompt.write_text(json.dumps({"world": None, "clicks": [{"point": [82, 58, 99]}]}))
    assert _segment(image, by_file, tiny_ckpt, "--prompts", str(prompt), *exact) == 0
    a, b, c = (read_volume(p).array for p in (by_index, by_world, by_file))
    assert a.any()
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)


# -- bad input: clear message, exit code 2, nothing overwritten -----------------------------------


@pytest.fixture
def existing_output(tmp_path) -> Path:
    path = tmp_path / "out.nii.gz"
    path.write_bytes(b"earlier result")
    return path


def _fails(capsys, code: int, match: str, existing: Path | None = None) -> None:
    assert code == 2
    err = capsys.readouterr().err
    assert match in err, err
    if existing is not None:
        assert existing.read_bytes() == b"earlier result"


def test_missing_image(tiny_ckpt, tmp_path, existing_output, capsys) -> None:
    code = _segment(tmp_path / "nope.nii.gz", existing_output, tiny_ckpt, "--point", "1,2,3")
    _fails(capsys, code, "nope.nii.gz: no such file", existing_output)


def test_corrupt_image(tiny_ckpt, tmp_path, existing_output, capsys) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(samples.sample("mr").image.read_bytes()[:5000])
    _fails(
        capsys,
        _segment(bad, existing_output, tiny_ckpt, "--point", "1,2,3"),
        "bad.nii.gz",
        existing_output,
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((20, 20), np.int16), "not a 3D volume"),
        (np.zeros((20, 20, 20, 2), np.int16), "4D image"),
        (np.full((20, 20, 20), np.nan, np.float32), "NaN or infinite"),
    ],
    ids=["2d", "4d", "nan"],
)
def test_unusable_images(data, match, tiny_ckpt, tmp_path, existing_output, capsys) -> None:
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    _fails(
        capsys,
        _segment(path, existing_output, tiny_ckpt, "--point", "1,2,3"),
        match,
        existing_output,
    )


def test_4d_with_channel_works(tiny_ckpt, tmp_path) -> None:
    path = tmp_path / "img.nii.gz"
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).normal(size=(20, 20, 20, 2)).astype(np.float32), np.eye(4)
        ),
        str(path),
    )
    assert (
        _segment(path, tmp_path / "m.nii.gz", tiny_ckpt, "--point", "10,10,10", "--channel", "1")
        == 0
    )


def test_empty_dicom_folder(tiny_ckpt, tmp_path, existing_output, capsys) -> None:
    (tmp_path / "dicom").mkdir()
    code = _segment(tmp_path / "dicom", existing_output, tiny_ckpt, "--point", "1,2,3")
    _fails(capsys, code, "no DICOM series found", existing_output)


def test_points_outside_the_image(tiny_ckpt, existing_output, capsys) -> None:
    code = _segment(samples.sample("ct").image, existing_output, tiny_ckpt, "--point", "500,2,3")
    _fails(
        capsys,
        code,
        "lies outside the image (voxel indices 0..121, 0..100, 0..111)",
        existing_output,
    )


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "1,2,3,4", "1,nan,2"])
def test_malformed_points(text, tiny_ckpt, existing_output, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _segment(samples.sample("ct").image, existing_output, tiny_ckpt, "--point", text)
    assert exit_info.value.code == 2
    assert "expected three numbers 'i,j,k'" in capsys.readouterr().err
    assert existing_output.read_bytes() == b"earlier result"


def test_no_clicks(tiny_ckpt, existing_output, capsys) -> None:
    _fails(
        capsys,
        _segment(samples.sample("ct").image, existing_output, tiny_ckpt),
        "no clicks",
        existing_output,
    )


@pytest.mark.parametrize(
    "content",
    [
        '{"clicks": [{"point": [1, 2]}]}',
        '{"points": []}',
        "not json",
        '{"world": "xyz", "clicks": []}',
    ],
)
def test_malformed_prompt_file(content, tiny_ckpt, tmp_path, existing_output, capsys) -> None:
    prompt = tmp_path / "p.json"
    prompt.write_text(content)
    code = _segment(
        samples.sample("ct").image, existing_output, tiny_ckpt, "--prompts", str(prompt)
    )
    _fails(capsys, code, "p.json", existing_output)


def test_checkpoint_that_does_not_fit(tmp_path, existing_output, capsys) -> None:
    other = fastsam3d.build_model("test-tiny", seed=0)
    ckpt = fastsam3d.save_native(
        tmp_path / "t.safetensors", other.state_dict(), other.cfg, "test-tiny"
    )
    code = _segment(samples.sample("ct").image, existing_output, ckpt, "--point", "82,58,99")
    _fails(capsys, code, "written for model 'test-tiny'", existing_output)


def test_output_equal_to_input(tiny_ckpt, tmp_path, capsys) -> None:
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(samples.sample("ct").image.read_bytes())
    before = image.read_bytes()
    _fails(capsys, _segment(image, image, tiny_ckpt, "--point", "82,58,99"), "overwrite the input")
    assert image.read_bytes() == before


def test_output_folder_missing_or_bad_format(tiny_ckpt, tmp_path, capsys) -> None:
    image = samples.sample("ct").image
    _fails(
        capsys,
        _segment(image, tmp_path / "no" / "m.nii.gz", tiny_ckpt, "--point", "1,2,3"),
        "does not exist",
    )
    _fails(
        capsys,
        _segment(image, tmp_path / "m.png", tiny_ckpt, "--point", "1,2,3"),
        "cannot write .png",
    )


def test_output_not_writable(tiny_ckpt, tmp_path, capsys, monkeypatch) -> None:
    import fastsam3d.data.io as io_module

    monkeypatch.setattr(io_module.os, "access", lambda path, mode: False)  # tests may run as root
    code = _segment(
        samples.sample("ct").image, tmp_path / "m.nii.gz", tiny_ckpt, "--point", "1,2,3"
    )
    _fails(capsys, code, "not writable")


def test_samples_commands(capsys) -> None:
    assert main(["samples", "list"]) == 0
    assert "example_ct.nii.gz" in capsys.readouterr().out
    assert main(["samples", "verify"]) == 0
    assert "match their checksums" in capsys.readouterr().out
    assert main(["samples", "fetch"]) == 2


def test_negative_numbers_are_points_not_options(tiny_ckpt, existing_output, capsys) -> None:
    code = _segment(samples.sample("ct").image, existing_output, tiny_ckpt, "--point", "-1,2,3")
    _fails(capsys, code, "voxel index (-1.0, 2.0, 3.0) lies outside the image", existing_output)


def test_a_model_without_weights_needs_a_checkpoint(tmp_path, existing_output, capsys) -> None:
    image = samples.sample("mr").image
    code = main(
        [
            "segment",
            str(image),
            "--model",
            "fastsam3d",
            "--point",
            "1,2,3",
            "--out",
            str(existing_output),
        ]
    )
    _fails(capsys, code, "'fastsam3d' has no bundled weights: pass --checkpoint", existing_output)


@pytest.mark.parametrize(
    ("structures", "match"),
    [
        ("liver,lever", "no structure 'lever' in total"),
        ("liver,brain", "['brain'] are not labelled"),
    ],
)
def test_demo_checks_structures_before_writing(structures, match, tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--structures", structures, "--runtime", "torch"])
    _fails(capsys, code, match)
    assert not out.exists()


def test_weights_with_changed_model_options_load_with_from_checkpoint(
    tmp_path, existing_output, capsys
) -> None:
    """Weights trained with a registry model's options changed (a training config's
    ``[model] encoder = {...}``) name the differing field and the way to load them; with
    ``--model from-checkpoint`` they run with the architecture they carry."""
    import dataclasses

    cfg = fastsam3d.get_spec("test-tiny-student").config
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, layer_scale_init=0.1))
    model = fastsam3d.build_model(cfg, seed=0)
    ckpt = fastsam3d.save_native(
        tmp_path / "changed.safetensors", model.state_dict(), model.cfg, "test-tiny-student"
    )
    image = samples.sample("ct").image
    code = _segment(image, existing_output, ckpt, "--point", "82,58,99")
    _fails(
        capsys,
        code,
        "encoder.layer_scale_init: 0.1 in the file, 0.0 named",
        existing_output,
    )
    out = tmp_path / "mask.nii.gz"
    args = ["segment", str(image), "--point", "82,58,99", "--out", str(out), "--threads", "2"]
    assert main([*args, "--model", "from-checkpoint", "--checkpoint", str(ckpt)]) == 0
    assert out.is_file()
    _fails(capsys, main([*args, "--model", "from-checkpoint"]), "needs --checkpoint FILE")
