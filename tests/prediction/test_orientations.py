"""Orientations of a frame: the turns and mirror images samples are spread over, and their undoing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.orientations import (
    View,
    orient,
    oriented_shape,
    plan_views,
    restore,
    shift,
    split_samples,
    views_used,
)
from napari_divnoising.prediction import SampleBatch, predict, predict_iter

from ._prediction_helpers import image, make_model


@pytest.mark.parametrize("shape", [(5, 5), (4, 7)])
def test_the_eight_orientations_are_distinct_and_each_is_undone(shape):
    frame = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
    turned = [orient(frame, i) for i in range(8)]
    assert len({t.numpy().tobytes() + bytes(t.shape) for t in turned}) == 8
    for i, t in enumerate(turned):
        assert t.shape == oriented_shape(shape, i) and t.is_contiguous()
        np.testing.assert_array_equal(t.numpy(), np.rot90(frame.numpy(), i % 4)[:, :: 1 if i < 4 else -1])
        back = restore(torch.stack([t, t + 1]), i)  # a batch of samples
        np.testing.assert_array_equal(back.numpy(), torch.stack([frame, frame + 1]).numpy())


def test_samples_are_split_evenly_and_every_orientation_gets_some():
    assert split_samples(100, 8) == [13, 13, 13, 13, 12, 12, 12, 12]
    assert split_samples(11, 4) == [3, 3, 3, 2]
    assert split_samples(3, 8) == [1, 1, 1]  # fewer samples than orientations: one orientation each
    assert split_samples(5, 1) == [5]


def test_the_samples_of_every_orientation_come_back_in_the_frames_own_orientation(monkeypatch):
    """With a network that only pools and upsamples its input, every sample must be the same image: only
    a correct turn back brings the samples of each orientation onto the frame."""
    model = make_model()
    net_type = type(model.network)
    m = model.network.size_multiple

    def encode(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, m).expand(-1, self.z_dim, -1, -1)
        return pooled, torch.full_like(pooled, -60.0)  # std ~ 1e-13: the latent noise vanishes

    def decode(self, z):
        return torch.nn.functional.interpolate(z[:, :1], scale_factor=m, mode="nearest")

    monkeypatch.setattr(net_type, "encode", encode)
    monkeypatch.setattr(net_type, "decode", decode)
    frame = image((10 * m, 14 * m))  # sides that are multiples of the pooling: pooling turns with the frame
    plain = predict(model, frame, 1, keep_samples=1, seed=0, orientations=1).samples[0]
    assert np.abs(plain - frame).mean() < np.abs(frame - frame.mean()).mean()  # it follows the frame
    result = predict(model, frame, 8, keep_samples=8, seed=0, orientations=8)
    assert result.orientations == 8
    for sample in result.samples:
        np.testing.assert_allclose(sample, plain, rtol=1e-5, atol=1e-3)


def test_orientations_and_offsets_are_checked():
    with pytest.raises(DivNoisingError, match="orientations must be 1, 2, 4 or 8"):
        predict(make_model(), image(), 4, orientations=3)
    with pytest.raises(DivNoisingError, match="grid offsets must be 1 or 2"):
        predict(make_model(), image(), 4, offsets=4)


def test_views_cover_every_orientation_at_the_first_offset_first():
    views = plan_views(100, 8, 2, size_multiple=4)
    assert [count for _, count in views] == split_samples(100, 16)
    assert [view for view, _ in views] == [View(i, 0) for i in range(8)] + [View(i, 2) for i in range(8)]
    assert [view for view, _ in plan_views(10, 8, 2, size_multiple=8)][-2:] == [View(0, 4), View(1, 4)]
    assert [view for view, _ in plan_views(5, 8, 2, size_multiple=4)] == [View(i, 0) for i in range(5)]
    assert [view for view, _ in plan_views(3, 1, 2, size_multiple=2)] == [View(0, 0), View(0, 1)]
    assert views_used(100, 8, 2) == (8, 2) and views_used(10, 8, 2) == (8, 2) and views_used(5, 8, 2) == (5, 1)


@pytest.mark.parametrize("shape", [(6, 9), (2, 3)])
def test_a_shifted_frame_is_padded_at_the_top_and_left_only(shape):
    frame = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
    shifted = shift(frame, 2)
    assert shifted.shape == (shape[0] + 2, shape[1] + 2)
    mode = "reflect" if min(shape) > 2 else "edge"
    np.testing.assert_array_equal(shifted.numpy(), np.pad(frame.numpy(), [(2, 0), (2, 0)], mode=mode))
    assert View(5, 2).shape(shape) == (shape[1] + 2, shape[0] + 2)
    np.testing.assert_array_equal(View(5, 2).apply(frame)[2:, 2:], orient(frame, 5))
    assert shift(frame, 0) is frame and View(0, 0).apply(frame) is frame


def test_the_samples_of_every_view_come_back_onto_the_frame(monkeypatch):
    """A network that only rearranges pixels into latent cells and back (lossless) must return the frame
    itself from every view: only a correct cut and turn back bring a shifted, turned view onto the frame."""
    model = make_model(depth=1)  # latent cells of 2 x 2 pixels fit into its 8 latent channels
    net_type = type(model.network)
    m = model.network.size_multiple

    def encode(self, x):
        cells = torch.nn.functional.pixel_unshuffle(x, m)  # (B, m*m, h, w), no information lost
        mu = torch.nn.functional.pad(cells, (0, 0, 0, 0, 0, self.z_dim - m * m))
        return mu, torch.full_like(mu, -60.0)

    def decode(self, z):
        return torch.nn.functional.pixel_shuffle(z[:, : m * m], m)

    assert model.network.z_dim >= m * m
    monkeypatch.setattr(net_type, "encode", encode)
    monkeypatch.setattr(net_type, "decode", decode)
    frame = image((37, 50))  # not a multiple of the pooling: views are padded differently
    result = predict(model, frame, 16, keep_samples=16, seed=0, orientations=8, offsets=2)
    assert (result.orientations, result.offsets) == (8, 2)
    for sample in result.samples:
        np.testing.assert_allclose(sample, frame, rtol=1e-5, atol=1e-3)


def test_a_frame_that_is_not_square_keeps_its_shape_in_every_output():
    model = make_model()
    events = list(predict_iter(model, image((30, 46)), 8, keep_samples=8, seed=1, orientations=8, compute_map=True))
    batches = [e for e in events if isinstance(e, SampleBatch)]
    assert len(batches) == 8 and all(b.samples.shape == (1, 30, 46) for b in batches)
    result = events[-1].result
    assert result.mmse.shape == result.map.shape == (30, 46) and result.samples.shape == (8, 30, 46)
    np.testing.assert_allclose(result.mmse, np.concatenate([b.samples for b in batches]).mean(0), atol=1e-3)
