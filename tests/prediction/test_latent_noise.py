"""Latent noise: keyed by (seed, sample, position), so crops and batches never change the numbers."""

from __future__ import annotations

import torch

from napari_divnoising.prediction.noise import NOISE_BLOCK, BlockNoise, GridNoise, frame_noise, latent_noise


def test_block_noise_crops_equal_the_same_region_of_the_whole_grid():
    cpu = torch.device("cpu")
    whole = latent_noise(3, range(0, 4), (0, 150), (0, 90), 2, cpu)
    assert whole.shape == (4, 2, 150, 90)
    crop = latent_noise(3, range(1, 3), (60, 131), (17, 90), 2, cpu)  # crosses block borders
    torch.testing.assert_close(crop, whole[1:3, :, 60:131, 17:90], rtol=0, atol=0)
    assert abs(whole.mean().item()) < 0.02 and abs(whole.std().item() - 1) < 0.02
    assert not torch.equal(whole[0], whole[1])  # samples differ
    b = NOISE_BLOCK
    assert not torch.equal(whole[0, :, :b, :b], whole[0, :, b : 2 * b, :b])  # blocks differ


def test_grid_noise_is_keyed_by_sample_not_by_batch():
    cpu = torch.device("cpu")
    together = GridNoise(5, 3, (40, 30), cpu).draw(range(0, 6))
    apart = GridNoise(5, 3, (40, 30), cpu)
    torch.testing.assert_close(apart.draw(range(2, 5)), together[2:5], rtol=0, atol=0)
    torch.testing.assert_close(apart.crop(range(2, 5), (10, 25), (3, 30)), together[2:5, :, 10:25, 3:30],
                               rtol=0, atol=0)
    other_seed = GridNoise(6, 3, (40, 30), cpu).draw(range(0, 1))
    assert not torch.equal(other_seed[0], together[0])
    assert abs(together.mean().item()) < 0.03 and abs(together.std().item() - 1) < 0.03


def test_the_scheme_follows_the_device():
    assert isinstance(frame_noise(1, 2, (8, 8), torch.device("cpu")), BlockNoise)
    assert isinstance(frame_noise(1, 2, (8, 8), torch.device("cuda")), GridNoise)
