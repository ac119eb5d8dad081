"""Prompt encoder: a point and the image-grid cell it lies in get related encodings."""

from __future__ import annotations

import pytest
import torch

from fastsam3d.config import PromptEncoderConfig
from fastsam3d.modeling.prompt_encoder import PromptEncoder3D


@pytest.mark.parametrize("swap", [True, False])
def test_point_encoding_matches_the_grid_cell(swap: bool) -> None:
    torch.manual_seed(0)
    grid, size = 8, 128
    encoder = PromptEncoder3D(PromptEncoderConfig(embed_dim=96, swap_pe_axes=swap), grid, size)
    dense = encoder.dense_pe()[0]  # (D, G, G, G)
    cell = (1, 5, 3)
    stride = size // grid
    # a point at the centre of that cell: (index + 0.5) / S == (cell + 0.5) / G
    point = torch.tensor([[(c + 0.5) * stride - 0.5 for c in cell]])
    encoded = encoder.pe_layer.encode((point + 0.5) / size)[0]
    same = dense[:, cell[0], cell[1], cell[2]]
    swapped = dense[:, cell[1], cell[0], cell[2]]
    if swap:  # upstream: the grid's axes 0 and 1 are exchanged
        torch.testing.assert_close(encoded, swapped)
        assert not torch.allclose(encoded, same, atol=1e-3)
    else:
        torch.testing.assert_close(encoded, same)
        assert not torch.allclose(encoded, swapped, atol=1e-3)


def test_upstream_layout_is_the_default() -> None:
    assert PromptEncoderConfig().swap_pe_axes is True


def test_click_maps_peak_at_the_clicks() -> None:
    cfg = PromptEncoderConfig(embed_dim=48, mask_in_chans=8, click_maps=True, click_map_sigma=1.5)
    encoder = PromptEncoder3D(cfg, grid=4, image_size=64)  # mask grid 16^3, 4 voxels per cell
    points = torch.tensor([[[10.0, 20.0, 30.0], [50.0, 5.0, 9.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    maps = encoder.render_clicks(points, labels)
    assert maps.shape == (1, 2, 16, 16, 16)
    positive, negative = maps[0]
    # voxel 10 lies in cell 2 (voxels 8-11), 20 in cell 5, 30 in cell 7
    assert torch.nonzero(positive == positive.max()).tolist() == [[2, 5, 7]]
    assert torch.nonzero(negative == negative.max()).tolist() == [[12, 1, 2]]
    # the padding point at the origin is ignored; values follow exp(-d^2 / 2 sigma^2) in cells
    assert float(positive[0, 0, 0]) < 1e-6
    d = (torch.tensor([10.0, 20.0, 30.0]) + 0.5 - (torch.tensor([2, 5, 9]) + 0.5) * 4) / 4
    expected = torch.exp(-d.square().sum() / (2 * 1.5**2))
    torch.testing.assert_close(positive[2, 5, 9], expected)


def test_click_maps_make_the_dense_embedding_depend_on_the_clicks() -> None:
    torch.manual_seed(0)
    cfg = PromptEncoderConfig(embed_dim=48, mask_in_chans=8, click_maps=True)
    encoder = PromptEncoder3D(cfg, grid=4, image_size=64)
    assert encoder.mask_downscaling[0].in_channels == 3
    labels = torch.ones(1, 1, dtype=torch.long)
    _, near = encoder(torch.tensor([[[8.0, 8.0, 8.0]]]), labels, None)
    _, far = encoder(torch.tensor([[[56.0, 56.0, 56.0]]]), labels, None)
    assert near.shape == (1, 48, 4, 4, 4)
    # the embedding changes where the click is, not elsewhere
    change = (near - far).abs().sum(dim=1)[0]
    assert change[0, 0, 0] > 10 * change[2, 1, 1]
    with pytest.raises(ValueError, match="click maps"):
        encoder.embed_mask(None, 1)


def test_without_click_maps_the_dense_embedding_ignores_the_clicks() -> None:
    encoder = PromptEncoder3D(PromptEncoderConfig(embed_dim=48, mask_in_chans=8), 4, 64)
    labels = torch.ones(1, 1, dtype=torch.long)
    zeros = torch.zeros(1, 1, 16, 16, 16)
    _, a = encoder(torch.tensor([[[8.0, 8.0, 8.0]]]), labels, zeros)
    _, b = encoder(torch.tensor([[[56.0, 56.0, 56.0]]]), labels, zeros)
    torch.testing.assert_close(a, b)
