"""The output-grid ceiling: the best Dice a logit grid of a given size can draw."""

from __future__ import annotations

import numpy as np
import pytest

from fastsam3d.data.frame import FrameSpec
from fastsam3d.data.volume import Volume
from fastsam3d.errors import InputError
from fastsam3d.train.output_ceiling import main, scan_ceilings, structure_ceiling


def _volume() -> Volume:
    return Volume.from_array(np.zeros((64, 64, 64), dtype=np.float32), (2.0, 2.0, 2.0))


def test_finer_grids_draw_more_and_a_thin_plate_only_on_a_fine_grid() -> None:
    volume, frame = _volume(), FrameSpec(size=64, spacing=2.0)
    block = np.zeros(volume.shape, dtype=bool)
    block[16:40, 8:32, 24:48] = True  # 8-voxel cells of the 8^3 grid, whole
    got = structure_ceiling(volume, "block", block, frame, [8, 16, 64])
    assert got.voxels == block.sum()
    # read back trilinearly, even whole cells lose their edges and corners
    assert 0.9 < got.dice[8] < got.dice[16] < got.dice[64] == pytest.approx(1.0)
    plate = np.zeros(volume.shape, dtype=bool)
    plate[30:32, 10:50, 10:50] = True  # 2 voxels thick
    thin = structure_ceiling(volume, "plate", plate, frame, [8, 32, 64]).dice
    assert thin[8] < 0.4  # a quarter of each 8-voxel cell: drawn 8 voxels thick at best
    assert thin[32] > 0.95
    assert thin[64] == pytest.approx(1.0)
    with pytest.raises(InputError, match="does not divide"):
        structure_ceiling(volume, "plate", plate, frame, [24])


def test_the_training_cts_ribs_need_the_fine_grid(capsys) -> None:
    frame = FrameSpec(size=128, spacing=1.5)
    rows = scan_ceilings("ct", frame, [32, 64, 128], ["rib_left_8", "liver"])
    rib, liver = (r.dice for r in rows)
    assert rib[32] < 0.9 < 0.97 < rib[64]
    assert liver[128] < 0.97  # the liver is wider than the 192 mm region
    assert main(["ct", "--structures", "rib_left_8", "--grids", "32,64"]) == 0
    out = capsys.readouterr().out
    assert "| rib_left_8 |" in out
    assert "| **mean** |" in out
    with pytest.raises(InputError, match="no structure nonsense"):
        scan_ceilings("ct", frame, [32], ["nonsense"])
