import numpy as np
import pytest

from napari_divnoising.data import PatchSampler, augment, load_frames, split_frames, validation_patches
from napari_divnoising.errors import DivNoisingError


def test_load_frames_accepts_integer_stacks_and_several_images():
    a = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    b = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float64)
    frames = load_frames([a, b], patch_size=32)
    assert len(frames) == 4
    assert all(f.dtype == np.float32 and f.ndim == 2 for f in frames)
    np.testing.assert_array_equal(frames[1], a[1].astype(np.float32))


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((40, 40, 3), np.uint8) + np.arange(3, dtype=np.uint8), "RGB"),
        (np.full((40, 40), np.nan, np.float32), "NaN"),
        (np.random.default_rng(0).random((20, 20)), "smaller than"),
    ],
)
def test_load_frames_rejects_bad_images(bad, words):
    with pytest.raises(DivNoisingError, match=words):
        load_frames([bad], patch_size=32)


def test_one_array_given_as_a_2d_list_or_tensor_is_one_image():
    import torch

    image = np.random.default_rng(1).normal(50, 5, (40, 36))
    for given in (image.tolist(), torch.tensor(image, requires_grad=True), image):
        frames = load_frames(given, patch_size=32)
        assert len(frames) == 1 and frames[0].shape == (40, 36)
    frames = load_frames([image.tolist(), image], patch_size=32)  # a list of images stays a list
    assert len(frames) == 2


@pytest.mark.parametrize("bad, words", [(None, "None"), ("noisy.tif", "file name"), (5, "array or a list"),
                                        ([1.0, 2.0, 3.0], "1 dimension")])
def test_load_frames_refuses_non_images(bad, words):
    with pytest.raises(DivNoisingError, match=words):
        load_frames(bad, patch_size=32)


def test_split_by_frames_holds_out_whole_frames_and_normalises_on_training_data():
    frames = [np.full((32, 32), float(i)) + np.eye(32) for i in range(20)]
    data = split_frames(frames, 16, 0.15, seed=1)
    assert data.split == "frames"
    assert len(data.val_regions) == 3 and len(data.train_regions) == 17
    train_ids = {id(r) for r in data.train_regions}
    assert not any(id(v) in train_ids for v in data.val_regions)
    pixels = np.concatenate([r.ravel() for r in data.train_regions])
    assert data.mean == pytest.approx(pixels.mean(), rel=1e-6)
    assert data.std == pytest.approx(pixels.std(), rel=1e-6)
    # deterministic for a seed, and another seed holds out other frames
    held_out = [float(v[0, 1]) for v in data.val_regions]
    again = split_frames(frames, 16, 0.15, seed=1)
    assert [float(v[0, 1]) for v in again.val_regions] == held_out
    other = split_frames(frames, 16, 0.15, seed=2)
    assert [float(v[0, 1]) for v in other.val_regions] != held_out


def test_single_frame_gets_a_disjoint_band():
    frame = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    data = split_frames([frame], 16, 0.15)
    assert data.split == "band"
    (train,), (val,) = data.train_regions, data.val_regions
    assert train.shape[0] + val.shape[0] == 100 and val.shape[0] >= 16
    assert train.max() < val.min()  # rows do not overlap


def test_tiny_frame_validates_on_training_data_with_a_warning():
    data = split_frames([np.random.default_rng(0).random((20, 20))], 16, 0.15)
    assert data.split == "none" and data.warnings


def test_augment_gives_the_eight_symmetries():
    patch = np.arange(16).reshape(4, 4)
    variants = {augment(patch, k).tobytes() for k in range(8)}
    assert len(variants) == 8


def test_sampler_patches_come_from_the_regions_and_cover_them():
    region = np.arange(20 * 20, dtype=np.float32).reshape(20, 20)
    sampler = PatchSampler([region], 4, np.random.default_rng(0), augment=False)
    batch = sampler.sample(500)
    assert batch.shape == (500, 4, 4)
    for patch in batch[:20]:
        y, x = divmod(int(patch[0, 0]), 20)
        np.testing.assert_array_equal(patch, region[y : y + 4, x : x + 4])
    corners = {int(p[0, 0]) for p in batch}
    assert len(corners) > 150  # 289 positions, drawn at random


def test_sampler_weights_regions_by_size():
    small = np.zeros((8, 8), np.float32)
    big = np.ones((40, 40), np.float32)
    batch = PatchSampler([small, big], 8, np.random.default_rng(0)).sample(2000)
    share_big = batch[:, 0, 0].mean()
    assert share_big == pytest.approx(33 * 33 / (33 * 33 + 1), abs=0.01)


def test_validation_patches_are_fixed_by_seed():
    region = np.random.default_rng(3).random((50, 50)).astype(np.float32)
    a = validation_patches([region], 16, 10, seed=0)
    b = validation_patches([region], 16, 10, seed=0)
    np.testing.assert_array_equal(a, b)
    c = validation_patches([region], 16, 10, seed=1)
    assert c.shape == a.shape and not np.array_equal(a, c)


def test_sampler_patches_depend_on_the_seed():
    region = np.random.default_rng(3).random((50, 50)).astype(np.float32)
    first = PatchSampler([region], 8, np.random.default_rng(0)).sample(16)
    np.testing.assert_array_equal(PatchSampler([region], 8, np.random.default_rng(0)).sample(16), first)
    assert not np.array_equal(PatchSampler([region], 8, np.random.default_rng(1)).sample(16), first)
