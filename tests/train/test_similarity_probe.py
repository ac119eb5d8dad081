"""The similarity probe: the embedding's cosine map against the model's own one-click mask."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import fastsam3d
from fastsam3d.data.frame import FrameSpec, resample_to_roi, roi_around
from fastsam3d.data.io import read_volume
from fastsam3d.data.volume import Volume
from fastsam3d.errors import InputError
from fastsam3d.eval.datasets import load_cases
from fastsam3d.eval.runner import load_targets
from fastsam3d.train.similarity_probe import format_table, main, probe_scan, probe_structure


class _LabelEmbedding:
    """A stand-in model whose embedding is the structure itself (two channels: inside and
    outside share per token) and whose decoder answers every click with an empty mask."""

    def __init__(self, inside: torch.Tensor) -> None:
        self.cfg = SimpleNamespace(
            image_size=64, low_res_size=16, prompt=SimpleNamespace(embed_dim=2)
        )
        self.device, self.dtype = torch.device("cpu"), torch.float32
        share = F.avg_pool3d(inside.float()[None, None], 16)  # (1, 1, 4, 4, 4)
        self.embedding = torch.cat([share, 1 - share], dim=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.embedding

    def decode(self, embedding, points, labels, mask_logits):
        return torch.full((1, 1, 16, 16, 16), -5.0), torch.zeros(1, 1)


def test_an_embedding_that_holds_the_structure_gives_a_high_similarity_dice() -> None:
    case = load_cases("ct", "samples")[0]
    volume = read_volume(case.image, channel=case.channel)
    liver = {s.name: m for s, m in load_targets(case, volume)}["liver"]
    frame = FrameSpec(size=64, spacing=3.0)
    # the probe's region: centred on the liver's deepest voxel, like the probe's own
    depth = ndimage.distance_transform_edt(liver, sampling=volume.spacing)
    click = np.array(np.unravel_index(int(np.argmax(depth)), liver.shape), dtype=np.float64)
    roi = roi_around(volume, click, frame)
    inside = resample_to_roi(Volume(liver.astype(np.float32), volume.affine), roi) > 0.5
    stub = _LabelEmbedding(inside)
    result = probe_structure(stub, volume, "liver", liver, frame)  # type: ignore[arg-type]
    assert result.voxels == int(inside.sum())
    assert result.model_dice == 0.0
    assert result.model_share == 0.0
    assert result.similarity_dice > 0.6  # 12 mm tokens, trilinear: close to the organ
    assert 0.0 <= result.threshold < 1.0


def test_probe_of_a_real_model_and_its_report() -> None:
    model = fastsam3d.load_model("test-tiny-hires", seed=3, random_weights=True)
    rows = probe_scan(model, "ct", ["spleen", "kidney_left"])
    assert [r.structure for r in rows] == ["spleen", "kidney_left"]
    for r in rows:
        assert 0.0 <= r.model_dice <= 1.0
        assert 0.0 <= r.similarity_dice <= 1.0
        assert r.voxels > 0
    table = format_table(rows)
    assert "| spleen |" in table
    assert "**mean**" in table
    with pytest.raises(InputError, match="no structure not_an_organ"):
        probe_scan(model, "ct", ["not_an_organ"])


def test_command_line_probes_the_bundled_model(capsys) -> None:
    assert main(["ct", "--structures", "spleen", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| spleen |" in out
    assert "similarity Dice" in out
