"""Memory estimates and out-of-memory handling."""

from __future__ import annotations

import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.prediction.memory import bytes_per_pixel, check_map_memory, gpu_pixel_budget, is_oom


def test_per_pixel_costs_follow_the_network_and_precision():
    net = DivNoisingVAE(depth=2, start_filters=32, z_dim=64)
    enc32, dec32 = bytes_per_pixel(net, half=False)
    enc16, dec16 = bytes_per_pixel(net, half=True)
    assert enc16 < enc32 and dec16 < dec32
    wide_enc, wide_dec = bytes_per_pixel(DivNoisingVAE(depth=2, start_filters=64, z_dim=64), half=False)
    assert wide_enc > enc32 and wide_dec > dec32
    folded = DivNoisingVAE(depth=2, start_filters=32, z_dim=64)
    folded.decoder = folded.inference_decoder()
    assert bytes_per_pixel(folded, half=False)[1] < dec32  # no full-resolution transposed-conv output


def test_pixel_budget_without_memory_information_is_the_cap():
    net = DivNoisingVAE(depth=2)
    assert gpu_pixel_budget(net, torch.device("cpu"), True, cap=12345678) == 12345678


def test_map_memory_check_and_oom_recognition():
    check_map_memory(10, (64, 64), None)  # unknown: allowed
    check_map_memory(10, (64, 64), 10**9)
    with pytest.raises(DivNoisingError, match="fewer samples"):
        check_map_memory(1000, (512, 512), 10**8)
    assert is_oom(MemoryError()) and is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not is_oom(RuntimeError("shape mismatch"))
