"""Fault matrix of the panels: full and read-only disks, a file where a folder should be, wrong axes, NaN data.

Each case asserts one error notification with a clear text (never the "failed unexpectedly" fallback
with a traceback in the log), that every worker has finished, that files which existed before are
byte for byte unchanged, and that the model (or noise model, or results) is still in memory and can be
saved elsewhere afterwards. Full and read-only disks are real tmpfs mounts where the machine allows it
(root), as in ``tests/test_faults.py``; elsewhere the read-only case uses a folder without write
permission and the full-disk case a file system that reports no free space.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising._widgets._session import NOISE_COLEARN, get_session
from napari_divnoising._widgets.noise_model_widget import NoiseModelWidget
from napari_divnoising._widgets.predict_widget import PredictWidget
from napari_divnoising._widgets.train_widget import TrainWidget
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.model_io import load_model
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_model_io import load_gmm_npz
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel

TEMP_MARKS = (".tmp", ".partial", ".old", "divnoising-probe")


# ---------------------------------------------------------------------- notifications and models


def one_error(notes: list[tuple[str, str]], *words: str) -> str:
    """The single error notification; it names every word (case-insensitive) and is not the fallback text."""
    errors = [text for level, text in notes if level == "error"]
    assert len(errors) == 1, notes
    text = errors[0]
    assert "unexpectedly" not in text and "Traceback" not in text, text
    for word in words:
        assert word.lower() in text.lower(), text
    return text


def tiny_model() -> DivNoisingModel:
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    noise = GaussianNoiseModel(a=0.0, b=100.0, sigma_min=1.0, trainable=False)
    return DivNoisingModel(net, noise, data_mean=50.0, data_std=20.0, name="tiny")


def same_weights(a: DivNoisingModel, b: DivNoisingModel) -> bool:
    sa, sb = a.network.state_dict(), b.network.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_kept(before: dict[str, bytes], root: Path) -> None:
    """Files that existed are unchanged and no temporary file is left behind."""
    after = snapshot(root)
    for name, data in before.items():
        assert after.get(name) == data, f"{name} changed"
    leftovers = [name for name in after if any(mark in name for mark in TEMP_MARKS)]
    assert not leftovers, leftovers


# ---------------------------------------------------------------------- disks


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


OLD_FILES = ("m.pt", "nm.npz", "img_mmse.tif", "img_variance.tif", "img_samples.tif")


@pytest.fixture
def read_only(tmp_path):
    """A folder that cannot be written, holding old files of every kind the panels write."""
    folder = tmp_path / "ro"
    if _can_mount() and _mount(folder, "size=1m"):
        try:
            for name in OLD_FILES:
                (folder / name).write_bytes(f"old {name}".encode())
            done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
            if done.returncode:
                pytest.skip("cannot remount a tmpfs read-only here")
            yield folder
        finally:
            _umount(folder)
        return
    folder.mkdir()
    for name in OLD_FILES:
        (folder / name).write_bytes(f"old {name}".encode())
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("permissions do not stop this user from writing (root without mount rights)")
    yield folder
    folder.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a full file system, holding old files of every kind the panels write.

    A real 1 MB tmpfs filled to the last block where it can be mounted; elsewhere a folder whose
    file system reports no free space (the check before writing is what then refuses).
    """
    folder = tmp_path / "full"
    if _can_mount() and _mount(folder, "size=1m"):
        try:
            for name in OLD_FILES:
                (folder / name).write_bytes(f"old {name}".encode())
            with open(folder / "filler", "wb", buffering=0) as handle:
                try:
                    while handle.write(b"\0" * 4096):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            yield folder
        finally:
            _umount(folder)
        return
    folder.mkdir()
    for name in OLD_FILES:
        (folder / name).write_bytes(f"old {name}".encode())
    import napari_divnoising.atomic as atomic

    monkeypatch.setattr(atomic, "free_bytes", lambda _folder: 0)
    yield folder


def filled_while_writing(full_disk: Path, monkeypatch) -> None:
    """Fool the free-space check (1 PB free), so that the real full disk refuses the write itself."""
    if not _is_mount(full_disk):
        pytest.skip("needs a real full tmpfs (root)")
    import napari_divnoising.atomic as atomic

    monkeypatch.setattr(atomic, "free_bytes", lambda _folder: 1 << 50)


@pytest.fixture
def file_in_the_way(tmp_path):
    """A path whose parent is a regular file (refused for root too)."""
    (tmp_path / "afile").write_bytes(b"a file")
    return tmp_path / "afile" / "sub"


PLACES = ["read_only", "file_in_the_way", "full_disk"]
PLACE_WORDS = {
    "file_in_the_way": ("afile", "is a file"),
    "full_disk": ("space",),
}


def place_words(place: str, folder: Path) -> tuple[str, ...]:
    if place == "read_only":
        return ("read-only",) if _is_mount(folder) else ("no permission",)
    return PLACE_WORDS[place]


def _is_mount(folder: Path) -> bool:
    return any(line.split()[1] == str(folder) for line in Path("/proc/mounts").read_text().splitlines())


# ---------------------------------------------------------------------- Train panel: Save model


@pytest.fixture
def train_panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    model = tiny_model()
    get_session(viewer).set_trained_model(model, "test")
    assert w.model is model
    yield viewer, w, model
    w.runner.stop_and_wait()


@pytest.mark.parametrize("place", PLACES)
def test_save_model_that_cannot_be_written_keeps_the_model(train_panel, notes, request, tmp_path, place):
    viewer, w, model = train_panel
    folder = request.getfixturevalue(place)
    root = folder if place != "file_in_the_way" else tmp_path
    before = snapshot(root)
    assert w.save_model(folder / "m.pt") is None
    text = one_error(notes, *place_words(place, folder))
    assert str(folder) in text
    assert_kept(before, root)
    assert w.model is model and get_session(viewer).trained_model is model
    assert w.save_button.isEnabled()
    good = w.save_model(tmp_path / "elsewhere" / "m.pt")  # the user saves it elsewhere afterwards
    assert good is not None and same_weights(load_model(good), model)


def test_save_model_when_the_disk_fills_while_writing(train_panel, notes, full_disk, monkeypatch, tmp_path):
    viewer, w, model = train_panel
    filled_while_writing(full_disk, monkeypatch)
    before = snapshot(full_disk)
    assert w.save_model(full_disk / "m.pt") is None
    one_error(notes, "disk is full", str(full_disk / "m.pt"))
    assert_kept(before, full_disk)
    assert w.model is model
    assert w.save_model(tmp_path / "m.pt") is not None


def test_training_then_failed_save_then_continue(train_panel, notes, wait_for, file_in_the_way, noisy_clean_pair,
                                                 tmp_path):
    """A model trained in the panel survives a failed save: it can be saved elsewhere and trained on."""
    viewer, w, _ = train_panel
    viewer.add_image(noisy_clean_pair[0], name="noisy")
    w.images.set_checked(["noisy"])
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.budget_unit.setCurrentText("steps")
    w.budget_value.setValue(2)
    w.patch_size.setValue(32)
    w.batch_size.setValue(2)
    w.device.setCurrentText("cpu")
    w.train_button.click()
    wait_for(w.runner, timeout=120_000)
    trained = w.model
    assert trained.history["steps"] == 2
    assert w.save_model(file_in_the_way / "m.pt") is None
    one_error(notes, "afile", "is a file")
    assert get_session(viewer).trained_model is trained and w.continue_button.isEnabled()
    assert load_model(w.save_model(tmp_path / "m.pt")).history["steps"] == 2
    w.continue_button.click()
    wait_for(w.runner, timeout=120_000)
    assert w.model.history["steps"] == 4


# ---------------------------------------------------------------------- Noise model panel: Save .npz


@pytest.fixture
def noise_panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = NoiseModelWidget(viewer)
    qtbot.addWidget(w)
    gmm = GMMNoiseModel.initial(0.0, 255.0, generator=torch.Generator().manual_seed(0))
    get_session(viewer).set_noise_model(gmm, "test GMM")
    yield viewer, w, gmm
    w.runner.stop_and_wait()


@pytest.mark.parametrize("place", PLACES)
def test_save_noise_model_that_cannot_be_written_keeps_it(noise_panel, notes, request, tmp_path, place):
    viewer, w, gmm = noise_panel
    folder = request.getfixturevalue(place)
    root = folder if place != "file_in_the_way" else tmp_path
    before = snapshot(root)
    assert w.save_noise_model(folder / "nm.npz") is None
    one_error(notes, *place_words(place, folder))
    assert_kept(before, root)
    assert get_session(viewer).noise_model is gmm and w.save_button.isEnabled()
    good = w.save_noise_model(tmp_path / "nm.npz")
    assert good is not None and torch.equal(load_gmm_npz(good).weight, gmm.weight.detach().float())


# ---------------------------------------------------------------------- Predict panel: Export


@pytest.fixture
def predicted(make_napari_viewer, qtbot, wait_for):
    """A Predict panel with finished results for layer 'img'."""
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    model = tiny_model()
    get_session(viewer).set_trained_model(model, "test")
    viewer.add_image(np.random.default_rng(0).normal(50, 20, (16, 16)).astype(np.float32), name="img")
    w.n_samples.setValue(3)
    w.keep_samples.setValue(2)
    w.predict_button.click()
    wait_for(w.runner)
    assert set(w.outputs) >= {"mmse", "variance", "samples"}
    yield viewer, w, model
    w.runner.stop_and_wait()
    w.prior_runner.stop_and_wait()


@pytest.mark.parametrize("place", PLACES)
def test_export_that_cannot_be_written_keeps_the_old_set_and_the_results(predicted, notes, request, tmp_path,
                                                                         monkeypatch, place):
    viewer, w, model = predicted
    from qtpy.QtWidgets import QMessageBox

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    folder = request.getfixturevalue(place)
    root = folder if place != "file_in_the_way" else tmp_path
    before = snapshot(root)
    mmse = viewer.layers["img_mmse"].data.copy()
    w.export_folder.setText(str(folder))
    assert w.export() == []
    one_error(notes, *place_words(place, folder))
    assert_kept(before, root)
    np.testing.assert_array_equal(w.outputs["mmse"], mmse)
    assert get_session(viewer).trained_model is model and w.export_button.isEnabled()
    w.export_folder.setText(str(tmp_path / "elsewhere"))
    written = w.export()
    assert {p.name for p in written} == {"img_mmse.tif", "img_variance.tif", "img_samples.tif"}
    np.testing.assert_allclose(tifffile.imread(tmp_path / "elsewhere" / "img_mmse.tif"), mmse, rtol=1e-6)


def test_export_when_the_disk_fills_while_writing_keeps_the_old_set(predicted, notes, full_disk, monkeypatch):
    viewer, w, _ = predicted
    from qtpy.QtWidgets import QMessageBox

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    filled_while_writing(full_disk, monkeypatch)
    before = snapshot(full_disk)
    w.export_folder.setText(str(full_disk))
    assert w.export() == []
    one_error(notes, "disk is full")
    assert_kept(before, full_disk)
    assert "mmse" in w.outputs


# ---------------------------------------------------------------------- wrong axes and bad values in the panels


@pytest.fixture
def two_channel_tiff(tmp_path):
    """A two-channel OME-TIFF (axes CYX) that napari's own reader opens as a plain 3-D layer."""
    frame = np.random.default_rng(1).normal(100, 10, (48, 48)).astype(np.float32)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, np.stack([frame, frame * 2]), metadata={"axes": "CYX"})
    return path


def _open_two_channels(viewer, path: Path):
    layers = viewer.open(path, plugin="napari")
    assert len(layers) == 1 and layers[0].data.shape == (2, 48, 48)
    return layers[0]


def test_two_channel_file_is_refused_by_every_panel(make_napari_viewer, qtbot, notes, wait_for, two_channel_tiff):
    viewer = make_napari_viewer()
    layer = _open_two_channels(viewer, two_channel_tiff)
    train, predict, noise = TrainWidget(viewer), PredictWidget(viewer), NoiseModelWidget(viewer)
    for w in (train, predict, noise):
        qtbot.addWidget(w)
    model = tiny_model()
    session = get_session(viewer)
    session.set_trained_model(model, "test")
    session.set_noise_choice(NOISE_COLEARN)

    train.images.set_checked([layer.name])
    train.budget_unit.setCurrentText("steps")  # short, should the refusal ever be missed
    train.budget_value.setValue(2)
    train.patch_size.setValue(32)
    train.device.setCurrentText("cpu")
    train.train_button.click()
    predict.image_layer.set_layer(layer.name)
    predict.predict_button.click()
    noise.calibration_layer.set_layer(layer.name)
    noise.fit_button.click()
    for runner in (train.runner, predict.runner, noise.runner):
        wait_for(runner)
    errors = [text for level, text in notes if level == "error"]
    assert len(errors) == 3, notes
    for text in errors:
        assert "2 channels" in text and layer.name in text and "Split" in text, text
    assert session.trained_model is model and train.model is model
    assert not predict.outputs and session.noise_model is None


def test_layer_with_a_channel_axis_label_is_refused(make_napari_viewer, qtbot, notes, wait_for):
    viewer = make_napari_viewer()
    data = np.random.default_rng(2).normal(50, 20, (2, 32, 32)).astype(np.float32)
    viewer.add_image(data, name="two", axis_labels=("c", "y", "x"))
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    model = tiny_model()
    get_session(viewer).set_trained_model(model, "test")
    w.image_layer.set_layer("two")
    w.predict_button.click()
    wait_for(w.runner)
    one_error(notes, "2 channels", "'two'")
    assert not w.outputs and get_session(viewer).trained_model is model


def test_single_channel_stack_from_a_file_is_not_refused(make_napari_viewer, qtbot, notes, wait_for, tmp_path):
    """The channel check looks at the file's axes: a plain stack (TYX) from a file still predicts."""
    viewer = make_napari_viewer()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(3).normal(50, 20, (2, 16, 16)).astype(np.float32),
                     imagej=True, metadata={"axes": "TYX"})
    (layer,) = viewer.open(path, plugin="napari")
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    get_session(viewer).set_trained_model(tiny_model(), "test")
    w.n_samples.setValue(2)
    w.image_layer.set_layer(layer.name)
    w.predict_button.click()
    wait_for(w.runner)
    assert not [text for level, text in notes if level == "error"], notes
    assert w.outputs["mmse"].shape == (2, 16, 16)


def test_nan_layer_is_one_notification_and_keeps_the_model(make_napari_viewer, qtbot, notes, wait_for):
    viewer = make_napari_viewer()
    data = np.random.default_rng(4).normal(50, 20, (48, 48)).astype(np.float32)
    data[3, 4] = np.nan
    viewer.add_image(data, name="nan")
    train, predict = TrainWidget(viewer), PredictWidget(viewer)
    for w in (train, predict):
        qtbot.addWidget(w)
    model = tiny_model()
    session = get_session(viewer)
    session.set_trained_model(model, "test")
    session.set_noise_choice(NOISE_COLEARN)
    train.images.set_checked(["nan"])
    train.device.setCurrentText("cpu")
    train.budget_unit.setCurrentText("steps")
    train.budget_value.setValue(2)
    train.patch_size.setValue(32)
    train.batch_size.setValue(2)
    train.train_button.click()
    wait_for(train.runner)
    predict.image_layer.set_layer("nan")
    predict.predict_button.click()
    wait_for(predict.runner)
    errors = [text for level, text in notes if level == "error"]
    assert len(errors) == 2 and all("NaN" in text and "unexpectedly" not in text for text in errors), notes
    assert not [text for level, text in notes if level == "warning"], notes  # no range warning about NaN
    assert session.trained_model is model and train.model is model
    assert not predict.outputs


# ---------------------------------------------------------------------- File > Save Layers (the plugin's writer)


@pytest.mark.parametrize("kind", ["image", "result"])
@pytest.mark.parametrize("place", PLACES)
def test_save_layers_to_a_place_that_cannot_be_written(make_napari_viewer, request, tmp_path, place, kind):
    from napari_divnoising._writer import SaveLayerError
    from napari_divnoising.outputs import result_metadata

    viewer = make_napari_viewer()
    metadata = result_metadata("mmse", source="img", model_name="m", n_samples=3, seed=1) if kind == "result" else {}
    data = np.random.default_rng(5).random((12, 10)).astype(np.float32)
    layer = viewer.add_image(data, name="img_mmse", metadata=metadata)
    folder = request.getfixturevalue(place)
    root = folder if place != "file_in_the_way" else tmp_path
    before = snapshot(root)
    with pytest.raises(SaveLayerError) as info:  # napari shows it as a notification
        layer.save(str(folder / "img_mmse.tif"), plugin="napari-divnoising")
    text = str(info.value)
    assert "\n" not in text and all(word.lower() in text.lower() for word in place_words(place, folder)), text
    assert_kept(before, root)
    (written,) = layer.save(str(tmp_path / "elsewhere.tif"), plugin="napari-divnoising")
    np.testing.assert_allclose(tifffile.imread(written), data)


def test_input_far_from_the_training_range_warns_and_still_predicts(make_napari_viewer, qtbot, notes, wait_for):
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    get_session(viewer).set_trained_model(tiny_model(), "test")  # trained on mean 50, std 20
    noisy = np.random.default_rng(6).normal(50, 20, (16, 16)).astype(np.float32)
    viewer.add_image(noisy, name="like")
    viewer.add_image(noisy * 20, name="bright")
    w.n_samples.setValue(2)
    for name in ("like", "bright"):
        w.image_layer.set_layer(name)
        w.predict_button.click()
        wait_for(w.runner)
        assert "mmse" in w.outputs
    warnings = [text for level, text in notes if level == "warning"]
    assert len(warnings) == 1, notes
    assert "Layer 'bright'" in warnings[0] and "far from the data the model was trained on" in warnings[0]
    assert not [text for level, text in notes if level == "error"], notes
