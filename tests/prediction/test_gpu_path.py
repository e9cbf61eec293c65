"""The GPU code path (stacked tiles, whole-grid noise, statistics on the device, lazy host copies), run on the
CPU so that CI checks it; and the same checks on CUDA where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.prediction import SampleBatch, map_estimate, predict, predict_iter, sampling
from napari_divnoising.prediction.noise import GridNoise
from napari_divnoising.prediction.results import PredictionResult

from ._prediction_helpers import image, make_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def spread_of(result) -> float:
    return float(result.samples.std(0).mean())


def test_stacked_tiles_give_the_default_paths_result():
    model = make_model()
    img = image((150, 134))
    default = predict(model, img, 5, seed=7, keep_samples=5)
    stacked = predict(model, img, 5, seed=7, keep_samples=5, tile_size=64, tiles_per_call=4, batch_size=2)
    everything = predict(model, img, 5, seed=7, keep_samples=5, tile_size=64, tiles_per_call=100, batch_size=5)
    spread = default.samples.std(0).mean()
    assert spread > 1.0
    for other in (stacked, everything):
        assert np.abs(other.samples - default.samples).max() < 1e-3 * spread
        np.testing.assert_allclose(other.mmse, default.mmse, atol=1e-3)
        np.testing.assert_allclose(other.variance, default.variance, rtol=1e-3, atol=1e-2)


def test_gpu_configuration_on_the_cpu_is_seamless_and_batch_independent(monkeypatch):
    # The noise scheme used on CUDA, forced here: tiles, stacking and batch size do not change the samples.
    monkeypatch.setattr(sampling, "frame_noise", lambda seed, z, grid, dev: GridNoise(seed, z, grid, dev))
    model = make_model()
    img = image((150, 134))
    untiled = predict(model, img, 6, seed=2, keep_samples=6, batch_size=6)
    tiled = predict(model, img, 6, seed=2, keep_samples=6, batch_size=4, tile_size=64, tiles_per_call=3)
    spread = untiled.samples.std(0).mean()
    assert spread > 1.0
    assert np.abs(tiled.samples - untiled.samples).max() < 1e-3 * spread
    np.testing.assert_allclose(tiled.mmse, untiled.mmse, atol=1e-3)


def test_sample_batch_arrays_are_copied_to_the_host_only_when_read():
    samples, mean = torch.arange(12.0).reshape(3, 2, 2), torch.ones(2, 2)
    event = SampleBatch(0, 1, samples, 3, 3, mean, mean * 2)
    assert all(isinstance(v, torch.Tensor) for v in event._arrays.values())
    assert isinstance(event.mean, np.ndarray) and isinstance(event._arrays["mean"], np.ndarray)
    assert isinstance(event._arrays["samples"], torch.Tensor)  # not read yet
    np.testing.assert_array_equal(event.samples, samples.numpy())
    assert event.variance[0, 0] == 2 and event.fraction == 1.0


def test_automatic_batch_is_halved_when_memory_runs_out(monkeypatch):
    from napari_divnoising.network import DivNoisingVAE

    original = DivNoisingVAE.decode
    calls = []

    def small_memory(self, z):
        calls.append(z.shape[0])
        if z.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, z)

    model = make_model()
    expected = predict(model, image(), 6, seed=1, keep_samples=6, batch_size=2, orientations=1, offsets=1)
    monkeypatch.setattr(DivNoisingVAE, "decode", small_memory)
    result = predict(model, image(), 6, seed=1, keep_samples=6, orientations=1, offsets=1)
    assert calls == [6, 3] + [1] * 6  # 6 fails, 3 fails, then one sample per call
    np.testing.assert_allclose(result.samples, expected.samples, atol=1e-4)


def test_the_result_type_builds_from_the_three_displayed_arrays():
    a = np.zeros((2, 2), np.float32)
    result = PredictionResult(a, a, None)  # how a front end builds one for its own tests
    assert result.samples is None and result.map is None and result.n_samples == 0


@cuda
def test_on_cuda_tiled_equals_untiled_and_seeds_reproduce():
    model = make_model()  # stays on the CPU; predict runs a copy on the GPU
    img = image((300, 260))
    kw = dict(seed=3, keep_samples=8, device="cuda", precision="float32")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 proper: compare to rounding
        untiled = predict(model, img, 8, **kw)
        again = predict(model, img, 8, batch_size=3, **kw)
        tiled = predict(model, img, 8, tile_size=96, tiles_per_call=5, batch_size=4, **kw)
    fast = predict(model, img, 8, seed=3, keep_samples=8, device="cuda")  # the default: float16
    assert np.abs(fast.samples - untiled.samples).mean() < 1e-2 * spread_of(untiled)
    spread = untiled.samples.std(0).mean()
    assert spread > 1.0 and model.device.type == "cpu"
    assert np.abs(again.samples - untiled.samples).max() < 1e-3 * spread
    assert np.abs(tiled.samples - untiled.samples).max() < 1e-3 * spread
    np.testing.assert_allclose(tiled.mmse, untiled.mmse, atol=1e-3)


@cuda
def test_on_cuda_statistics_and_map_match_the_samples():
    model = make_model()
    img = image((64, 80))
    events = list(predict_iter(model, img, 12, seed=5, keep_samples=12, batch_size=5, compute_map=True,
                               device="cuda"))
    batches = [e for e in events if isinstance(e, SampleBatch)]
    samples = np.concatenate([b.samples for b in batches])
    result = events[-1].result
    np.testing.assert_allclose(result.samples, samples)
    np.testing.assert_allclose(result.mmse, samples.mean(0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(result.variance, samples.var(0), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(result.map, map_estimate(samples), atol=1e-2)  # GPU MAP equals the CPU's


@cuda
def test_on_cuda_a_stack_equals_its_frames_alone():
    from napari_divnoising.prediction import frame_seed

    model = make_model()
    stack = np.stack([image((40, 44), seed=s) for s in range(3)])
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        result = predict(model, stack, 5, seed=9, keep_samples=2, device="cuda", precision="float32")
        alone = predict(model, stack[1], 5, seed=frame_seed(9, 1, 3), keep_samples=2, device="cuda",
                        precision="float32")
    assert result.samples.shape == (2, 3, 40, 44)
    np.testing.assert_allclose(result.mmse[1], alone.mmse, atol=1e-3)
    np.testing.assert_allclose(result.samples[:, 1], alone.samples, atol=1e-3)


@cuda
def test_on_cuda_prior_samples_do_not_depend_on_the_tiling():
    from napari_divnoising.prediction import generate_prior

    model = make_model()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        whole = generate_prior(model, 4, (120, 90), seed=2, device="cuda", precision="float32")
        tiled = generate_prior(model, 4, (120, 90), seed=2, device="cuda", precision="float32", tile_size=48,
                               batch_size=3)
    assert whole.shape == (4, 120, 90) and whole.std(0).mean() > 1.0
    np.testing.assert_allclose(tiled, whole, atol=1e-3)
