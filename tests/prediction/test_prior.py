"""Prior samples: any size, batch and tiling independent, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.events import Done, run_to_end
from napari_divnoising.prediction import PriorBatch, PriorDone, generate_prior, generate_prior_iter

from ._prediction_helpers import make_model


def test_prior_samples_any_size_and_tiling_independent():
    model = make_model()
    events = list(generate_prior_iter(model, 5, (70, 90), batch_size=2, seed=2))
    batches = [e for e in events if isinstance(e, PriorBatch)]
    assert [b.done for b in batches] == [2, 4, 5]
    images = events[-1].images
    assert isinstance(events[-1], PriorDone) and images.shape == (5, 70, 90)
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), images)
    assert images.std(0).mean() > 1.0  # different images
    tiled = generate_prior(model, 5, (70, 90), seed=2, tile_size=48)
    np.testing.assert_allclose(tiled, images, atol=1e-3)
    assert generate_prior(model, 1, 33).shape == (1, 33, 33)
    with pytest.raises(DivNoisingError):
        generate_prior(model, 0, 32)



def test_prior_ends_in_a_done_event_whose_result_is_the_images():
    model = make_model()
    images = run_to_end(generate_prior_iter(model, 3, 24, seed=1))
    assert images.shape == (3, 24, 24)
    done = list(generate_prior_iter(model, 3, 24, seed=1))[-1]
    assert isinstance(done, Done) and isinstance(done, PriorDone)
    np.testing.assert_array_equal(done.result, images)


def test_prior_with_stacked_tiles_equals_untiled():
    model = make_model()
    untiled = generate_prior(model, 3, (90, 70), seed=4)
    stacked = generate_prior(model, 3, (90, 70), seed=4, tile_size=48, tiles_per_call=4, batch_size=2)
    np.testing.assert_allclose(stacked, untiled, atol=1e-3)
