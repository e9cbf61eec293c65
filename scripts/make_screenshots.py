"""Take the user-guide screenshots from the real napari window, driving a short real flow.

Run under a virtual display:

    xvfb-run -a python scripts/make_screenshots.py [--train-steps 150] [--only noise]

It opens napari, loads the plugin's synthetic sample data, fits a noise model,
trains briefly, predicts with streaming samples (and MAP), exports TIFFs to a
temporary folder and saves PNGs to docs/images/.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-divnoising"
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def pump(seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_until(condition, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)
    pump(0.5)


def shot(viewer: napari.Viewer, name: str) -> None:
    viewer.reset_view()
    pump(0.5)
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path)


def show_only(viewer: napari.Viewer, keep: str) -> None:
    """Hide the plugin docks other than ``keep`` so each screenshot shows one widget full height."""
    for name, widget in list(viewer.window.dock_widgets.items()):
        if PLUGIN in name:
            widget.parent().setVisible(keep in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--only", choices=["noise", "train", "predict"], default=None)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True, title="napari-divnoising")
    viewer.window._qt_window.resize(1700, 1000)
    viewer.open_sample(PLUGIN, "noisy_and_calibration")
    viewer.reset_view()
    pump(1.0)
    shot(viewer, "01_sample_data")

    # 1. Noise model from the calibration stack.
    _, noise = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise model")
    noise.calibration_layer.set_layer("calibration")
    noise.fit_button.click()
    wait_until(lambda: not noise.runner.running)
    shot(viewer, "02_noise_model")
    if args.only == "noise":
        return
    viewer.layers.remove("calibration")  # not needed any more; keeps the sample slider alone below

    # 2. Training on the noisy image with the fitted GMM.
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    show_only(viewer, "Train")
    train.images.set_checked(["noisy"])
    train.budget_unit.setCurrentText("steps")
    train.budget_value.setValue(args.train_steps)
    train.advanced.expand(animate=False)
    train.train_button.click()
    wait_until(lambda: len(train.loss_plot.train_steps) >= args.train_steps // 2)
    shot(viewer, "03_training_running")
    wait_until(lambda: not train.runner.running)
    train.advanced.collapse(animate=False)
    shot(viewer, "04_training_done")
    if args.only == "train":
        return

    # 3. Prediction with streaming samples, MAP, export.
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    show_only(viewer, "Predict")
    predict.image_layer.set_layer("noisy")
    predict.n_samples.setValue(args.samples)
    predict.compute_map.setChecked(importlib.util.find_spec("napari_divnoising.map_estimate") is not None)
    predict.export_folder.setText(tempfile.mkdtemp(prefix="divnoising_export_"))
    predict.predict_button.click()
    wait_until(lambda: not predict.runner.running)
    for layer in viewer.layers:
        layer.visible = layer.name in ("noisy_mmse",)
    shot(viewer, "05_predict_mmse")
    for layer in viewer.layers:
        layer.visible = layer.name == "noisy_samples"
    viewer.dims.set_current_step(0, 3)
    shot(viewer, "06_predict_samples")
    written = predict.export()
    # Grid view of input and results (the samples layer would take a grid cell of its own).
    viewer.layers.remove("noisy_samples")
    for layer in viewer.layers:
        layer.visible = True
    viewer.grid.enabled = True
    shot(viewer, "07_predict_grid")
    print("exported", [str(p) for p in written])
    viewer.close()


if __name__ == "__main__":
    main()
