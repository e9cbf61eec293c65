"""Posterior sampling: streaming statistics, tiling without seams, stacks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.events import Progress
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.prediction import (
    PredictionDone,
    RunningMoments,
    SampleBatch,
    frame_seed,
    min_tile_size,
    predict,
    predict_iter,
)

from ._prediction_helpers import image, make_model


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(5, 3, (k, 4, 5)) for k in (1, 3, 7, 2)]
    moments = RunningMoments((4, 5))
    for b in batches:
        moments.update(b)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(moments.mean, everything.mean(0), rtol=1e-6)
    np.testing.assert_allclose(moments.variance, everything.var(0), rtol=1e-5)


@pytest.mark.parametrize(("orientations", "done"), [(1, [4, 8, 11]), (8, [2, 4, 6, 7, 8, 9, 10, 11])])
def test_streaming_running_mean_and_variance_equal_batch_statistics(orientations, done):
    model = make_model()
    events = list(predict_iter(model, image(), 11, batch_size=4, seed=5, keep_samples=3, orientations=orientations,
                         offsets=1))
    batches = [e for e in events if isinstance(e, SampleBatch)]
    assert [b.done for b in batches] == done and all(b.total == 11 for b in batches)
    samples = np.concatenate([b.samples for b in batches])
    assert samples.shape == (11, 50, 62)
    assert samples.std(0).mean() > 1.0  # the samples really differ, so the checks below mean something
    for b in batches:  # every intermediate state is a valid result
        so_far = samples[: b.done]
        np.testing.assert_allclose(b.mean, so_far.mean(0), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(b.variance, so_far.var(0), rtol=1e-4, atol=1e-3)
    result = events[-1].result
    assert isinstance(events[-1], PredictionDone)
    np.testing.assert_allclose(result.mmse, samples.mean(0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(result.variance, samples.var(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(result.samples, samples[:3])
    assert result.n_samples == 11 and result.seed == 5 and result.map is None
    assert result.orientations == orientations
    assert abs(float(result.mmse.mean()) - 100.0) < 40  # raw units, not normalised


def test_same_seed_same_samples_and_batch_size_does_not_matter():
    model = make_model()
    a = predict(model, image(), 6, batch_size=6, seed=3, keep_samples=6)
    b = predict(model, image(), 6, batch_size=4, seed=3, keep_samples=6)
    c = predict(model, image(), 6, batch_size=6, seed=4, keep_samples=6)
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-3)
    assert np.abs(a.samples - c.samples).mean() > 0.5


@pytest.mark.parametrize("views", [{}, {"orientations": 1, "offsets": 2}])  # 4 samples: 4 turns, or 2 grids
def test_tiled_and_untiled_agree_without_seams(views):
    model = make_model()
    img = image((150, 134))  # not a multiple of 2**depth, several tiles each way at 64
    untiled = predict(model, img, 4, seed=7, keep_samples=4, batch_size=2, **views)
    events = list(predict_iter(model, img, 4, seed=7, keep_samples=4, tile_size=64, batch_size=3, **views))
    tiled = events[-1].result
    assert any(isinstance(e, Progress) and "tiles" in e.message for e in events)
    spread = untiled.samples.std(0).mean()
    assert spread > 1.0
    # Same latent noise: the tiled samples equal the untiled ones (no seams, no blending artefacts).
    assert np.abs(tiled.samples - untiled.samples).max() < 1e-3 * spread
    np.testing.assert_allclose(tiled.mmse, untiled.mmse, atol=1e-3)


def test_tiles_smaller_than_the_receptive_field_are_refused():
    model = make_model()
    least = min_tile_size(model.network)
    with pytest.raises(DivNoisingError, match="receptive field"):
        predict(model, image(), 2, tile_size=least - 4)
    predict(model, image(), 1, tile_size=least)  # the smallest allowed works


def test_stack_is_processed_frame_by_frame():
    model = make_model()
    stack = np.stack([image((40, 44), seed=s) for s in range(3)])
    events = list(predict_iter(model, stack, 5, seed=9, keep_samples=2, batch_size=5, orientations=1, offsets=1))
    frames = [e.frame for e in events if isinstance(e, SampleBatch)]
    assert frames == [0, 1, 2]
    assert all(e.n_frames == 3 for e in events if isinstance(e, SampleBatch))
    result = events[-1].result
    assert result.mmse.shape == stack.shape and result.variance.shape == stack.shape
    assert result.samples.shape == (2, 3, 40, 44)
    # Frame 1 of the stack equals predicting that frame alone with its frame seed.
    alone = predict(model, stack[1], 5, seed=frame_seed(9, 1, 3), keep_samples=2, orientations=1, offsets=1)
    np.testing.assert_allclose(result.mmse[1], alone.mmse, atol=1e-3)
    np.testing.assert_allclose(result.samples[:, 1], alone.samples, atol=1e-3)


def test_leading_singleton_axes_keep_the_input_shape():
    model = make_model()
    result = predict(model, image((32, 36))[None], 2, keep_samples=1)
    assert result.mmse.shape == (1, 32, 36) and result.samples.shape == (1, 1, 32, 36)


def test_map_is_computed_when_asked():
    model = make_model()
    events = list(predict_iter(model, image((30, 30)), 8, compute_map=True, seed=1))
    result = events[-1].result
    assert result.map.shape == (30, 30)
    assert any(isinstance(e, Progress) and "MAP" in e.message for e in events)
    assert np.abs(result.map - result.mmse).mean() < 3 * np.sqrt(result.variance.mean())


def test_the_callers_model_is_left_untouched():
    model = make_model()
    model.network.train()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    predict(model, image(), 2, device="cpu")
    assert model.network.training
    assert model.network.decoder[0].weight.is_contiguous()
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, before[k])


def test_consumer_does_not_run_in_inference_mode_while_suspended():
    model = make_model()
    gen = predict_iter(model, image(), 4, batch_size=1)
    next(e for e in gen if isinstance(e, SampleBatch))
    assert not torch.is_inference_mode_enabled()
    gen.close()


@pytest.mark.parametrize(
    "data, kwargs, words",
    [
        (np.full((20, 20), np.nan, np.float32), {}, "NaN"),
        (np.zeros((20, 20), np.float32), {}, "constant"),
        (np.zeros((2, 2, 20, 20), np.float32) + np.arange(20), {}, "dimensions"),
        (np.random.rand(30, 30, 3), {}, "RGB"),
        (np.random.rand(20, 20), {"n_samples": 0}, "at least 1"),
        (np.random.rand(20, 20), {"batch_size": 0}, "batch size"),
        (np.random.rand(20, 20), {"precision": "int4"}, "precision"),
    ],
)
def test_bad_input_raises_clear_errors(data, kwargs, words):
    model = make_model()
    kwargs = {"n_samples": 2, **kwargs}
    n = kwargs.pop("n_samples")
    with pytest.raises(DivNoisingError, match=words):
        predict(model, data, n, **kwargs)


def test_out_of_memory_becomes_a_tile_size_suggestion(monkeypatch):
    model = make_model()

    def no_memory(self, z):
        raise MemoryError()

    monkeypatch.setattr(DivNoisingVAE, "decode", no_memory)
    with pytest.raises(DivNoisingError, match="--tile-size"):
        predict(model, image(), 2)


def test_map_refused_when_the_samples_would_not_fit_in_memory(monkeypatch):
    from napari_divnoising.prediction import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    with pytest.raises(DivNoisingError, match="fewer samples"):
        predict(make_model(), image(), 4, compute_map=True)
    predict(make_model(), image(), 2)  # without MAP nothing needs to be held


@pytest.mark.parametrize("orientations", [1, 8])
@pytest.mark.parametrize("shape", [(32, 32), (30, 34)])
def test_streamed_sample_batches_stay_valid_after_the_next_batch(shape, orientations):
    # Events must not hand out views of memory that a later batch reuses.
    model = make_model()
    pairs = [(e.samples, e.samples.copy())
             for e in predict_iter(model, image(shape), 6, batch_size=2, seed=3, orientations=orientations, offsets=1)
             if isinstance(e, SampleBatch)]
    assert len(pairs) == (3 if orientations == 1 else 6)  # 8 orientations of 6 samples: one sample each
    for kept, at_event_time in pairs:
        np.testing.assert_array_equal(kept, at_event_time)
    assert not np.array_equal(pairs[0][1], pairs[1][1])
