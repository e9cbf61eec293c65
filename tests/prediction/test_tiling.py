"""Tiling geometry and decoding plans: cores cover the frame once, margins cover the receptive field."""

from __future__ import annotations

import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.prediction.tiling import (
    BATCH_PIXEL_BUDGET,
    check_tile_size,
    min_tile_size,
    plan_decoding,
    plan_tiles,
    tile_margin,
)


def net(depth: int = 2) -> DivNoisingVAE:
    return DivNoisingVAE(depth=depth, start_filters=8, z_dim=4)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_margin_covers_the_networks_receptive_radius(depth):
    n = net(depth)
    m = n.size_multiple
    assert tile_margin(n) * m >= max(n.receptive_radius())
    assert (tile_margin(n) - 1) * m < max(n.receptive_radius())  # and is not larger than needed
    assert min_tile_size(n) == (2 * tile_margin(n) + 1) * m


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("latent, tile", [((37, 50), 64), ((9, 40), 48), ((64, 64), 100), ((5, 5), 64)])
def test_cores_tile_the_grid_and_windows_keep_their_margins(latent, tile, uniform):
    n = net(2)
    margin = tile_margin(n)
    tiling = plan_tiles(latent, tile, n, uniform=uniform)
    for spans, length in ((tiling.rows, latent[0]), (tiling.cols, latent[1])):
        covered = []
        for w0, w1, c0, c1 in spans:
            covered += range(c0, c1)
            assert 0 <= w0 <= c0 < c1 <= w1 <= length
            assert c0 - w0 >= margin or w0 == 0  # a margin, or the frame's own border
            assert w1 - c1 >= margin or w1 == length
            assert w1 - w0 <= tile // n.size_multiple
        assert covered == list(range(length))  # every latent pixel in exactly one core
    if uniform:
        assert tiling.uniform


def test_user_tile_sizes_are_checked_and_rounded():
    n = net(2)
    least = min_tile_size(n)
    assert check_tile_size(None, n) is None
    assert check_tile_size(least + 3, n) == least
    with pytest.raises(DivNoisingError, match="receptive field"):
        check_tile_size(least - 4, n)


def test_cpu_plan_is_untiled_up_to_1024_with_one_tile_per_call():
    n = net(2)
    cpu = torch.device("cpu")
    small = plan_decoding(n, (512, 512), 100, cpu)
    assert len(small.tiling.tiles) == 1 and small.tiles_per_call == 1
    assert small.batch == BATCH_PIXEL_BUDGET // (512 * 512)
    big = plan_decoding(n, (4096, 4096), 10, cpu)
    assert big.tile == 1024 and len(big.tiling.tiles) > 1 and big.tiles_per_call == 1
    assert not big.tiling.uniform  # border windows clipped: least work
    assert plan_decoding(n, (64, 64), 3, cpu).batch == 3  # never more than asked for


def test_gpu_plan_decodes_big_frames_whole_and_batches_samples():
    # Planned for a CUDA device without one: memory unknown, so the pixel cap alone decides.
    n = net(2)
    cuda = torch.device("cuda")
    plan = plan_decoding(n, (512, 512), 1000, cuda, half=True)
    assert len(plan.tiling.tiles) == 1 and plan.batch >= 64
    big = plan_decoding(n, (4096, 4096), 20, cuda, half=True)
    assert len(big.tiling.tiles) == 1 and big.batch >= 2
    tiled = plan_decoding(n, (4096, 4096), 20, cuda, tile_size=512, half=True)
    assert tiled.tiles_per_call > 1 and tiled.tiling.uniform  # small user tiles are stacked per call


def test_user_settings_win_over_the_plan():
    n = net(2)
    plan = plan_decoding(n, (300, 300), 50, torch.device("cpu"), tile_size=96, batch_size=7, tiles_per_call=5)
    assert plan.batch == 7 and plan.tiles_per_call == 5 and plan.tiling.uniform and not plan.automatic_batch
