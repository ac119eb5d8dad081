"""Weight averaging of model files (fastsam3d.train.soup)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fastsam3d
from fastsam3d.checkpoint import save_native
from fastsam3d.errors import InputError
from fastsam3d.train.soup import main, make_soup, parse_ingredient, soup_state


def _model_file(path: Path, seed: int, name: str = "test-tiny") -> Path:
    model = fastsam3d.load_model(name, seed=seed, random_weights=True)
    return save_native(path, model.state_dict(), model.cfg, name)


def test_soup_is_the_weighted_mean_and_loads(tmp_path: Path) -> None:
    a, b = _model_file(tmp_path / "a.safetensors", 1), _model_file(tmp_path / "b.safetensors", 2)
    assert main([str(tmp_path / "s.safetensors"), f"{a}:0.25", f"{b}:0.75"]) == 0
    soup = fastsam3d.load_model(None, tmp_path / "s.safetensors").state_dict()
    sa = fastsam3d.load_model(None, a).state_dict()
    sb = fastsam3d.load_model(None, b).state_dict()
    floats = [k for k in soup if soup[k].is_floating_point()]
    assert any(not torch.equal(sa[k], sb[k]) for k in floats)  # the seeds differ
    for key in floats:
        torch.testing.assert_close(soup[key], 0.25 * sa[key] + 0.75 * sb[key])
    # weight 1 on one model (as two halves of it) gives that model back
    make_soup(tmp_path / "same.safetensors", [(a, 0.5), (a, 0.5)])
    same = fastsam3d.load_model(None, tmp_path / "same.safetensors").state_dict()
    assert all(torch.equal(same[k], sa[k]) for k in sa)


def test_soup_refuses_what_cannot_be_averaged(tmp_path: Path) -> None:
    a = _model_file(tmp_path / "a.safetensors", 1)
    with pytest.raises(InputError, match="sum to 1"):
        make_soup(tmp_path / "s.safetensors", [(a, 0.5), (a, 0.4)])
    other = _model_file(tmp_path / "o.safetensors", 1, name="fastsam3d-lite")
    with pytest.raises(InputError, match="configuration differs"):
        make_soup(tmp_path / "s.safetensors", [(a, 0.5), (other, 0.5)])
    bare = tmp_path / "bare.pth"  # weights without our configuration
    torch.save(fastsam3d.load_model(None, a).state_dict(), bare)
    with pytest.raises(InputError, match="not one of our model files"):
        make_soup(tmp_path / "s.safetensors", [(bare, 0.5), (a, 0.5)])
    # ... unless a native file names the configuration they share
    make_soup(tmp_path / "c.safetensors", [(bare, 0.5), (a, 0.5)], config_from=a)
    shared = fastsam3d.load_model(None, tmp_path / "c.safetensors").state_dict()
    assert all(
        torch.equal(shared[k], v) for k, v in fastsam3d.load_model(None, a).state_dict().items()
    )
    assert not (tmp_path / "s.safetensors").exists()
    with pytest.raises(InputError, match="other parameters"):
        soup_state([{"w": torch.ones(2)}, {"v": torch.ones(2)}], [0.5, 0.5])
    with pytest.raises(InputError, match="shapes differ"):
        soup_state([{"w": torch.ones(2)}, {"w": torch.ones(3)}], [0.5, 0.5])
    for bad in ("model.safetensors", "model.safetensors:0", "model.safetensors:x", ":0.5"):
        with pytest.raises(InputError, match="PATH:WEIGHT"):
            parse_ingredient(bad)
    assert parse_ingredient("c:/runs/m.safetensors:0.3") == (Path("c:/runs/m.safetensors"), 0.3)
