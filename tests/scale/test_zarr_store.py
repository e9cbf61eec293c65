"""OME-Zarr results store: equals in-memory prediction, metadata, pyramid, regions of large frames, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.prediction import predict
from napari_divnoising.scale import (
    UnitDone,
    ZarrPlan,
    ZarrPredictionDone,
    ZarrPredictionSettings,
    open_input,
    predict_to_zarr,
    predict_to_zarr_iter,
    read_results,
)


def test_store_equals_in_memory_prediction_with_ome_metadata(tmp_path, model_file, model, stack, stack_zarr):
    out = tmp_path / "results.ome.zarr"
    settings = ZarrPredictionSettings(n_samples=6, keep_samples=2, compute_map=True, seed=3)
    events = list(predict_to_zarr_iter(model_file, stack_zarr, out, settings))
    assert isinstance(events[0], ZarrPlan) and events[0].total == 5 and events[0].already_done == 0
    assert [type(e) for e in events[1:]] == [UnitDone] * 5 + [ZarrPredictionDone]

    ref = predict(model, stack, 6, seed=3, keep_samples=2, compute_map=True, orientations=1, offsets=1)
    res = read_results(out)
    # Bit for bit the same as predicting the whole stack in memory with the same seed.
    np.testing.assert_array_equal(res["mmse"][0][...], ref.mmse)
    np.testing.assert_array_equal(res["variance"][...], ref.variance)
    np.testing.assert_array_equal(res["map"][...], ref.map)
    # Samples: (t, sample, y, x) in the store, (sample, t, y, x) in memory.
    np.testing.assert_array_equal(np.moveaxis(res["samples"][...], 1, 0), ref.samples)

    # Axes and pixel sizes of the input; a 2x pyramid of the MMSE (mean of 2x2 blocks).
    assert res["axes"] == ["t", "y", "x"]
    assert res["scale"][0] == pytest.approx([1.0, 0.3, 0.3])
    assert res["scale"][1] == pytest.approx([1.0, 0.6, 0.6])
    level1 = res["mmse"][1][...]
    assert level1.shape == (5, 36, 68)
    np.testing.assert_allclose(level1, ref.mmse.reshape(5, 36, 2, 68, 2).mean((2, 4)), rtol=1e-6, atol=1e-5)
    assert res["complete"] == 1.0

    # Zarr v3 with OME-NGFF 0.5 metadata that ome-zarr itself reads back (the root is the MMSE image).
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["ome"]["version"] == "0.5"
    back = open_input(out)
    assert back.shape == stack.shape and back.scale == pytest.approx((1.0, 0.3, 0.3))
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    for name in ("variance", "map", "samples"):
        nodes = list(Reader(parse_url(str(out / name)))())
        assert nodes[0].data[0].shape == res[name].shape
    assert [a["name"] for a in json.loads((out / "samples" / "zarr.json").read_text())["attributes"]["ome"][
        "multiscales"][0]["axes"]] == ["t", "sample", "y", "x"]


def test_large_frames_are_split_into_regions_that_agree_with_whole_frames(tmp_path, model_file, model, write_zarr):
    rng = np.random.default_rng(1)
    image = rng.normal(20, 15, (2, 150, 136)).astype(np.float32)
    src = write_zarr(tmp_path / "big.ome.zarr", image, "zyx", chunks=(1, 64, 64))
    out = tmp_path / "big_results.ome.zarr"
    settings = ZarrPredictionSettings(n_samples=4, keep_samples=1, seed=7, region_size=64)
    done = predict_to_zarr(model_file, src, out, settings)
    assert done.total == 2 * 3 * 3 and done.computed == done.total
    ref = predict(model, image, 4, seed=7, keep_samples=1, orientations=1, offsets=1)
    res = read_results(out)
    # Regions are predicted from the region plus the receptive margin with latent noise at global
    # positions: the same numbers as the whole frame up to float rounding, and no seams.
    spread = float(ref.mmse.std())
    np.testing.assert_allclose(res["mmse"][0][...], ref.mmse, atol=2e-5 * spread)
    np.testing.assert_allclose(res["samples"][...], ref.samples, atol=2e-5 * spread)
    np.testing.assert_allclose(res["variance"][...], ref.variance, rtol=1e-4, atol=1e-5 * spread**2)
    assert res["mmse"][0].chunks == (1, 64, 64) and res["mmse"][1].chunks == (1, 32, 32)


def test_blank_frame_in_a_stack_is_still_predicted(tmp_path, model_file, stack, write_zarr):
    data = stack.copy()
    data[2] = 7
    src = write_zarr(tmp_path / "blank.ome.zarr", data, "tyx")
    out = tmp_path / "blank_results.ome.zarr"
    predict_to_zarr(model_file, src, out, ZarrPredictionSettings(n_samples=3, keep_samples=0, seed=1))
    res = read_results(out)
    mmse = res["mmse"][0][...]
    assert np.isfinite(mmse).all() and res["complete"] == 1.0 and res["samples"] is None and res["map"] is None
    assert mmse[2].std() > 0  # a real prediction was written, not the fill value


def test_store_without_ome_metadata_or_with_wrong_axes_is_refused(tmp_path, model_file, write_zarr):
    import zarr

    out = tmp_path / "r.ome.zarr"
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("0", shape=(2, 64, 64), dtype="uint16")
    with pytest.raises(DivNoisingError, match="no OME-Zarr image metadata"):
        predict_to_zarr(model_file, tmp_path / "plain.zarr", out)

    channels = write_zarr(tmp_path / "rgb.ome.zarr", np.ones((3, 64, 64), np.uint8), "cyx")
    with pytest.raises(DivNoisingError, match="3 channels"):
        predict_to_zarr(model_file, channels, out)

    swapped = write_zarr(tmp_path / "swapped.ome.zarr", np.ones((2, 64, 64), np.uint8), "tyx")
    meta_path = swapped / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"] = [
        {"name": "t", "type": "time"}, {"name": "x", "type": "space"}, {"name": "q"},
    ]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DivNoisingError, match="last two axes must be y,x"):
        predict_to_zarr(model_file, swapped, out)
    assert not out.exists()  # nothing was created for refused inputs


def test_other_model_or_settings_refused_unless_force(tmp_path, model_file, other_model_file, stack_zarr, model):
    out = tmp_path / "r.ome.zarr"
    settings = ZarrPredictionSettings(n_samples=3, keep_samples=0, seed=2)
    predict_to_zarr(model_file, stack_zarr, out, settings)
    first = read_results(out)["mmse"][0][...]

    with pytest.raises(DivNoisingError, match="another model.*--force"):
        predict_to_zarr(other_model_file, stack_zarr, out, settings)
    with pytest.raises(DivNoisingError, match="n_samples 3 \\(this run: 4\\).*--force"):
        predict_to_zarr(model_file, stack_zarr, out, ZarrPredictionSettings(n_samples=4, keep_samples=0, seed=2))
    with pytest.raises(DivNoisingError, match="seed 2 \\(this run: 5\\)"):
        predict_to_zarr(model_file, stack_zarr, out, ZarrPredictionSettings(n_samples=3, keep_samples=0, seed=5))
    np.testing.assert_array_equal(read_results(out)["mmse"][0][...], first)  # untouched by the refusals

    # Same job again without a seed: adopts the store's seed, nothing left to compute.
    again = predict_to_zarr(model_file, stack_zarr, out, ZarrPredictionSettings(n_samples=3, keep_samples=0))
    assert again.computed == 0 and again.seed == 2

    done = predict_to_zarr(other_model_file, stack_zarr, out, settings, force=True)
    assert done.computed == 5
    assert read_results(out)["info"]["model"]["name"] == "other"
    assert not np.array_equal(read_results(out)["mmse"][0][...], first)


def test_output_that_is_not_a_store_or_is_the_input_is_refused(tmp_path, model_file, stack_zarr):
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(DivNoisingError, match="not a Zarr store"):
            predict_to_zarr(model_file, stack_zarr, folder, force=force)
    assert (folder / "notes.txt").read_text() == "keep me"
    with pytest.raises(DivNoisingError, match="is the input"):
        predict_to_zarr(model_file, stack_zarr, stack_zarr)
    with pytest.raises(DivNoisingError, match="must name a Zarr store"):
        predict_to_zarr(model_file, stack_zarr, tmp_path / "results")


def test_read_only_output_location_gives_one_clear_error(tmp_path, model_file, stack_zarr):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked / "r.ome.zarr"
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a location the kernel refuses
            target = "/sys/divnoising-test.ome.zarr"
            try:
                os.mkdir(target)
                os.rmdir(target)
                pytest.skip("no read-only location available to this user")
            except PermissionError:
                pass
        with pytest.raises(DivNoisingError, match="read-only"):
            predict_to_zarr(model_file, stack_zarr, target, ZarrPredictionSettings(n_samples=2, keep_samples=0))
    finally:
        locked.chmod(0o700)


def test_2d_image_and_ngff_04_zarr_v2_input(tmp_path, model_file, model):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    image = np.random.default_rng(3).normal(20, 15, (40, 52)).astype(np.float32)
    path = tmp_path / "v04.ome.zarr"
    write_image(image, zarr.open_group(str(path), mode="w", zarr_format=2), axes="yx", scale_factors=(),
                fmt=FormatV04(), scale={"y": 0.5, "x": 0.25})
    source = open_input(path)
    assert source.n_frames == 1 and source.scale == pytest.approx((0.5, 0.25))
    out = tmp_path / "v04_results.ome.zarr"
    predict_to_zarr(model_file, path, out, ZarrPredictionSettings(n_samples=3, keep_samples=2, seed=8))
    ref = predict(model, image, 3, seed=8, keep_samples=2, orientations=1, offsets=1)
    res = read_results(out)
    np.testing.assert_array_equal(res["mmse"][0][...], ref.mmse)
    np.testing.assert_array_equal(res["samples"][...], ref.samples)
    assert res["axes"] == ["y", "x"] and res["scale"][0] == pytest.approx([0.5, 0.25])


def test_events_follow_the_shared_protocol(tmp_path, model_file, stack_zarr):
    from napari_divnoising.events import run_to_end

    out = tmp_path / "r.ome.zarr"
    seen = []
    path = run_to_end(predict_to_zarr_iter(model_file, stack_zarr, out, ZarrPredictionSettings(n_samples=2)),
                      seen.append)
    assert path == str(out) and sum(isinstance(e, UnitDone) for e in seen) == 5
    assert all(e.worker and e.peak_rss > 0 for e in seen if isinstance(e, UnitDone))


def test_content_fingerprint_reads_bounded_crops_and_notices_changed_pixels():
    from napari_divnoising.scale.ome import FINGERPRINT_CROP, content_fingerprint

    class Recording:
        """An array that records how many pixels each read asks for."""

        def __init__(self, data):
            self.data, self.dtype, self.read = data, data.dtype, []

        def __getitem__(self, index):
            part = self.data[index]
            self.read.append(part.size)
            return part

    image = np.random.default_rng(0).integers(0, 255, (2048, 1536), dtype=np.uint16)
    recorded = Recording(image)
    first = content_fingerprint(recorded, image.shape)
    assert max(recorded.read) <= FINGERPRINT_CROP**2 and sum(recorded.read) <= 3 * FINGERPRINT_CROP**2
    changed = image.copy()
    changed[1024, 768] += 1  # one pixel in the centre crop
    assert content_fingerprint(changed, changed.shape) != first
    assert content_fingerprint(image.copy(), image.shape) == first
