"""The panels fit a narrow dock and a 1080p window: nothing is cut off at the right, no plot text leaves its figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qtpy.QtWidgets import QAbstractButton, QLabel, QScrollArea

from napari_divnoising._widgets._layout import MIN_CONTENT_WIDTH, content_width
from napari_divnoising._widgets._session import get_session
from napari_divnoising.noise_model_fitting import empirical_noise_statistics
from napari_divnoising.noise_models import GMMNoiseModel

PLUGIN = "napari-divnoising"
PANELS = ("Noise model", "Train", "Predict")
LONG_NAME = "2026-11-26_fixed-cells_BPAE_confocal_488nm_field-of-view-017_noisy"


def dock_panels(viewer) -> list:
    panels = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in PANELS]
    for panel in panels:
        if hasattr(panel, "advanced"):
            panel.advanced.expand(animate=False)  # the widest rows are the advanced settings
    return panels


def cut_off(panel) -> list[str]:
    """Buttons and labels of ``panel`` narrower than their text needs, and the panel itself when its
    contents are wider than the visible part of its scroll area."""
    scroll = panel.findChild(QScrollArea)
    contents = scroll.widget()
    problems = []
    if contents.width() > scroll.viewport().width():
        problems.append(f"contents {contents.width()} px wide in a {scroll.viewport().width()} px dock")
    for child in contents.findChildren(QAbstractButton) + contents.findChildren(QLabel):
        if child.isVisibleTo(contents) and child.width() < child.minimumSizeHint().width():
            problems.append(f"{type(child).__name__} {child.text()!r}")
    return problems


def gmm(slope: float = 2.0, intercept: float = 16.0) -> GMMNoiseModel:
    """A GMM whose variance is close to ``slope * s + intercept`` over 100-500 grey values."""
    w = torch.zeros(9, 2)
    w[3:6, 0] = math.log(intercept + slope * 300)
    w[3:6, 1] = slope / (intercept + slope * 300)
    return GMMNoiseModel(w, 100.0, 500.0, min_variance=0.1)


def texts_outside_figure(canvas) -> list[str]:
    """Texts (title, axis labels, tick labels in view, legend) drawn partly outside the canvas's figure,
    i.e. cut off on screen."""
    figure = canvas.figure
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = []
    for ax in figure.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            texts += [tick.label1 for tick in axis.get_major_ticks() if min(lo, hi) <= tick.get_loc() <= max(lo, hi)]
        legend = ax.get_legend()
        if legend is not None:
            texts += legend.get_texts()
    box = figure.bbox
    outside = []
    for text in texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 1 or extent.y0 < box.y0 - 1 or extent.x1 > box.x1 + 1 or extent.y1 > box.y1 + 1:
            outside.append(text.get_text())
    return outside


def test_panel_contents_fit_a_narrow_dock_even_with_long_layer_names(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 64, 64), np.float32), name=LONG_NAME)
    viewer.add_image(np.zeros((64, 64), np.float32), name=LONG_NAME + "_2d")
    for panel in dock_panels(viewer):
        assert content_width(panel) <= MIN_CONTENT_WIDTH, type(panel).__name__


@pytest.mark.parametrize("width", [1920, 1366])
def test_nothing_is_cut_off_with_the_three_panels_docked(make_napari_viewer, qtbot, width):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(width, 1080 if width == 1920 else 768)
    viewer.add_image(np.zeros((64, 64), np.float32), name=LONG_NAME)
    panels = dock_panels(viewer)
    qtbot.wait(200)
    for panel in panels:
        assert cut_off(panel) == [], type(panel).__name__


@pytest.mark.parametrize("width_px", [MIN_CONTENT_WIDTH - 30, 440])
def test_noise_model_plot_text_stays_inside_the_figure(make_napari_viewer, width_px):
    viewer = make_napari_viewer()
    noise = viewer.window.add_plugin_dock_widget(PLUGIN, "Noise model")[1]
    rng = np.random.default_rng(0)
    signal = rng.uniform(100, 500, (1, 64, 64))
    noise.statistics = empirical_noise_statistics(signal, signal + rng.normal(0, 1, (8, 64, 64)) * np.sqrt(2 * signal))
    get_session(viewer).set_noise_model(gmm(), "test")
    canvas = noise.plot
    assert canvas.ax.get_legend() is not None and canvas.ax.get_ylabel()
    canvas.figure.set_size_inches(width_px / canvas.figure.dpi, canvas.height() / canvas.figure.dpi)
    assert texts_outside_figure(canvas) == []


@pytest.mark.parametrize("width_px", [MIN_CONTENT_WIDTH - 30, 440])
def test_loss_plot_text_stays_inside_the_figure(make_napari_viewer, width_px):
    viewer = make_napari_viewer()
    train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")[1]
    plot = train.loss_plot
    steps = list(range(1, 2001))
    plot.set_history({"train_steps": steps, "train_loss": [5.0 + 100.0 / s for s in steps],
                      "val_steps": steps[::100], "val_loss": [5.1 + 100.0 / s for s in steps[::100]]})
    plot.redraw()
    plot.figure.set_size_inches(width_px / plot.figure.dpi, plot.height() / plot.figure.dpi)
    assert texts_outside_figure(plot) == []


def test_the_sample_slider_label_is_shown_whole_when_a_stack_already_has_the_axis(make_napari_viewer, qtbot):
    from napari_divnoising._widgets._outputs import Geometry, set_output_layer
    from napari_divnoising.outputs import result_metadata

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.add_image(np.zeros((20, 32, 32), np.uint16), name="calibration")  # its frame axis is called "-3"
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="noisy")
    qtbot.wait(100)
    meta = result_metadata("samples", source="noisy", model_name="m", n_samples=5, seed=0)
    set_output_layer(viewer, "noisy_samples", np.zeros((5, 64, 64), np.float32),
                     Geometry.of(image).with_leading_axis("sample"), meta)
    qtbot.wait(100)
    label = viewer.window._qt_viewer.dims.slider_widgets[0].axis_label
    assert label.text() == "sample"
    assert label.width() >= label.fontMetrics().boundingRect("sample").width()  # not elided to "..."
