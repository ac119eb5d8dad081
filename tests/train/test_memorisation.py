"""The memorisation probe: fixed (region, one click) pairs, fitted in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastsam3d
from fastsam3d.errors import InputError
from fastsam3d.train.memorisation import click_pairs, fit_pairs, main


def _tiny():
    return fastsam3d.load_model("test-tiny-hires", seed=3, random_weights=True)


def test_one_pair_is_fitted_and_the_records_count_steps() -> None:
    model = _tiny()
    rng = np.random.default_rng(0)
    pairs = click_pairs(model, "ct", 1, rng)
    (pair,) = pairs
    size = model.cfg.image_size
    assert pair.image.shape == pair.target.shape == (1, 1, size, size, size)
    assert pair.target.sum() > 0
    i, j, k = (round(v) for v in pair.point[0, 0].tolist())
    assert pair.target[0, 0, i, j, k] == 1  # the click lies in its structure
    records = fit_pairs(model, pairs, 30, 1e-2, rng)
    assert [r.epoch for r in records] == list(range(31))
    assert [r.steps for r in records[:3]] == [0, 0, 1]
    assert records[-1].loss < 0.7 * records[0].loss
    assert records[0].dice < 0.3  # a random model draws no structure
    assert records[-1].dice > 0.6  # and has learned this one


def test_decoder_only_leaves_the_encoder_as_it_was() -> None:
    model = _tiny()
    rng = np.random.default_rng(1)
    pairs = click_pairs(model, "ct", 2, rng)
    assert len({p.structure for p in pairs}) == 2
    encoder = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    fit_pairs(model, pairs, 2, 1e-3, rng, trainable="decoder")
    after = model.image_encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in encoder.items())
    changed = model.mask_decoder.state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in decoder.items())


def test_bad_requests_name_what_is_allowed() -> None:
    model = _tiny()
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match=r"0 pairs asked for; it has \d+ structures"):
        click_pairs(model, "ct", 0, rng)
    with pytest.raises(InputError, match="9999 pairs"):
        click_pairs(model, "ct", 9999, rng)
    pairs = click_pairs(model, "ct", 1, rng)
    with pytest.raises(InputError, match="choose all or decoder"):
        fit_pairs(model, pairs, 1, 1e-3, rng, trainable="encoder")  # type: ignore[arg-type]


def test_command_line_prints_a_table_and_plots(tmp_path, capsys) -> None:
    plot = tmp_path / "curve.png"
    argv = ["ct", "--pairs", "1", "--epochs", "1", "--threads", "1", "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| 1 | deepest | all | 0.001 | 1 | 1 |" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clicks_from_the_inner_half_and_probes_at_the_deepest_voxel(tmp_path, capsys) -> None:
    model = _tiny()
    deepest = click_pairs(model, "ct", 2, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    pairs = click_pairs(model, "ct", 2, rng, clicks_per_structure=3)
    assert [p.structure for p in pairs] == [deepest[0].structure] * 3 + [deepest[1].structure] * 3
    for pair in pairs:
        i, j, k = (round(v) for v in pair.point[0, 0].tolist())
        assert pair.target[0, 0, i, j, k] == 1
    assert not torch.equal(pairs[0].image, pairs[1].image)  # each click opens its own region
    assert not torch.equal(pairs[3].image, pairs[4].image)
    records = fit_pairs(model, pairs, 2, 1e-3, rng, probes=deepest)
    assert [r.steps_after for r in records] == [0, 6, 12]
    assert all(r.probe_dice is not None and 0.0 <= r.probe_dice <= 1.0 for r in records)
    assert fit_pairs(model, pairs, 1, 1e-3, rng)[-1].probe_dice is None
    with pytest.raises(InputError, match="clicks_per_structure must be >= 0"):
        click_pairs(model, "ct", 1, rng, clicks_per_structure=-1)
    plot = tmp_path / "c.png"
    argv = ["ct", "--pairs", "1", "--steps", "2", "--clicks-per-structure", "2",
            "--threads", "1", "--plot", str(plot)]  # fmt: skip
    assert main(argv) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 | 2 |")]
    assert len(row) == 1
    assert row[0].split("|")[6].strip() == "2"  # 1 epoch of 2 pairs
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_batch_takes_one_step_on_its_mean_loss() -> None:
    """Batch 2 of 2 pairs: one step per epoch, the same first-epoch Dice as batch 1 (both
    before any update), and a different model afterwards."""
    rng_pairs = np.random.default_rng(2)
    model_a, model_b = _tiny(), _tiny()
    pairs = click_pairs(model_a, "ct", 2, rng_pairs)
    one = fit_pairs(model_a, pairs, 2, 1e-3, np.random.default_rng(0))
    two = fit_pairs(model_b, pairs, 2, 1e-3, np.random.default_rng(0), batch=2)
    assert [r.steps_after for r in two] == [0, 1, 2]
    assert [r.steps_after for r in one] == [0, 2, 4]
    assert two[0].dice == pytest.approx(one[0].dice)
    assert two[1].dice == pytest.approx(one[0].dice)  # epoch 1 is scored before its one step
    a, b = model_a.state_dict(), model_b.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="batch must be >= 1"):
        fit_pairs(model_a, pairs, 1, 1e-3, np.random.default_rng(0), batch=0)
