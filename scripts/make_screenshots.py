"""Take the user-guide screenshots (docs/images/*.png) from the real napari window, driving a short real flow.

Run from the repository root under a virtual display the size of a 1080p screen:

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/make_screenshots.py [--train-steps 60] [--only noise]

It opens napari at 1920 x 1080 with the three panels docked, loads the plugin's synthetic sample data,
fits a noise model on the calibration stack, trains briefly, predicts with streaming samples and MAP,
exports the TIFFs to a temporary folder and writes the PNGs to docs/images/ (256-colour PNGs, to keep
the repository small). The default training is a few dozen steps, enough for result layers in about
a minute on a laptop CPU, not for a good model; ``--train-steps 2000`` gives results that look like a
real run. Look at every image before committing it.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_divnoising._sample_data import noisy_image

PLUGIN = "napari-divnoising"
PANELS = ("Noise model", "Train", "Predict")
IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
WINDOW = (1920, 1080)


def pump(seconds: float = 0.3) -> None:
    """Let Qt process events for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Process events until ``condition()`` holds (TimeoutError after ``timeout`` seconds)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)
    pump(0.5)


def save_png(rgba: np.ndarray, path: Path) -> None:
    """Write a screenshot as a 256-colour PNG (a fraction of the size of the RGBA one, text stays sharp)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).quantize(256).save(path, optimize=True)


def shot(viewer: napari.Viewer, name: str, reset_view: bool = True) -> None:
    """Screenshot the whole window (canvas, layer list, docks) to docs/images/<name>.png."""
    if reset_view:
        viewer.reset_view()
    pump(0.8)
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{name}.png"
    save_png(viewer.screenshot(canvas_only=False, flash=False), path)
    print("wrote", path)


def show_only(viewer: napari.Viewer, keep: str | None) -> None:
    """Show only the plugin dock ``keep`` (all three when None), so a screenshot shows one panel full height."""
    for name, dock in list(viewer.window.dock_widgets.items()):
        if PLUGIN in name:
            dock.parent().setVisible(keep is None or keep in name)
    pump(0.3)


def psnr(image: np.ndarray, clean: np.ndarray, data_range: float = 400.0) -> float:
    """Peak signal-to-noise ratio in dB (the sample's signal spans about 400 grey values)."""
    mse = float(np.mean((np.asarray(image, np.float64) - clean) ** 2))
    return 10.0 * np.log10(data_range**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=60, help="training budget in steps (default 60)")
    parser.add_argument("--network", choices=["auto", "divnoising", "hierarchical"], default="auto",
                        help="network to train (default auto: the Train panel's own choice)")
    parser.add_argument("--samples", type=int, default=30, help="posterior samples per image (default 30)")
    parser.add_argument("--only", choices=["noise", "train", "predict"], default=None,
                        help="stop after this panel's screenshots")
    args = parser.parse_args()

    viewer = napari.Viewer(show=True, title="napari-divnoising")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample(PLUGIN, "noisy_and_calibration")
    panels: dict[str, Any] = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in PANELS}
    noise, train, predict = (panels[name] for name in PANELS)
    viewer.layers.selection.active = viewer.layers["noisy"]
    pump(1.0)
    shot(viewer, "01_sample_data")  # the three panels docked at once fit a 1080p screen (each scrolls)

    # 1. Noise model from the calibration stack.
    show_only(viewer, "Noise model")
    noise.calibration_layer.set_layer("calibration")
    noise.fit_button.click()
    wait_until(lambda: not noise.runner.running)
    shot(viewer, "02_noise_model")
    if args.only == "noise":
        return

    # 2. Training on the noisy image with the fitted GMM.
    show_only(viewer, "Train")
    train.images.set_checked(["noisy"])
    train.budget_unit.setCurrentText("steps")
    train.budget_value.setValue(args.train_steps)
    if args.network != "auto":
        train.advanced_settings.editors["network"].set(args.network)
    train.train_button.click()
    wait_until(lambda: len(train.loss_plot.train_steps) >= args.train_steps // 2 or not train.runner.running)
    shot(viewer, "03_training_running")
    wait_until(lambda: not train.runner.running)
    shot(viewer, "04_training_done")
    if args.only == "train":
        return

    # 3. Prediction with streaming samples, MAP, export.
    show_only(viewer, "Predict")
    predict.image_layer.set_layer("noisy")
    predict.n_samples.setValue(args.samples)
    predict.compute_map.setChecked(importlib.util.find_spec("napari_divnoising.map_estimate") is not None)
    predict.export_folder.setText(tempfile.mkdtemp(prefix="divnoising_export_"))
    predict.predict_button.click()
    wait_until(lambda: not predict.runner.running)
    for layer in viewer.layers:
        layer.visible = layer.name in ("noisy_mmse",)
    viewer.layers.selection.active = viewer.layers["noisy_mmse"]
    shot(viewer, "05_predict_mmse")
    for layer in viewer.layers:
        layer.visible = layer.name == "noisy_samples"
    viewer.layers.selection.active = viewer.layers["noisy_samples"]
    viewer.dims.set_current_step(0, 3)
    shot(viewer, "06_predict_samples")
    # Input and results side by side (the samples and the calibration stack would take cells of their own).
    for layer in viewer.layers:
        layer.visible = layer.name in ("noisy", "noisy_mmse", "noisy_variance", "noisy_map")
    viewer.layers.selection.active = viewer.layers["noisy_mmse"]
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9 / older
    grid.enabled = True
    grid.shape = (2, 2)
    shot(viewer, "07_predict_grid")
    written = predict.export()  # after the last screenshot: its notification would cover part of the canvas
    print("exported", [str(p) for p in written])
    _, clean = noisy_image()  # the sample's known clean image: how good is the result shown?
    for name in ("noisy", "noisy_mmse", "noisy_map"):
        score = psnr(viewer.layers[name].data, clean)
        print(f"PSNR of {name} against the clean image (data range 400): {score:.1f} dB")
    viewer.close()


if __name__ == "__main__":
    main()
