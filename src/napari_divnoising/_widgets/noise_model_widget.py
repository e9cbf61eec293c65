"""The `Noise model` dock widget: fit a GMM noise model, look at it, save / load it, choose what Train uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..errors import DivNoisingError
from ..io import as_image_stack
from ..noise_model_fitting import (
    NoiseFitProgress,
    NoiseFitResult,
    empirical_noise_statistics,
    fit_gmm_iter,
    fitting_pairs,
    noisy_image_pairs,
)
from ._core import FIT_PROGRESS_INTERVAL_S, latest_every
from ._layers import LayerPicker, layer_data_copy, warn_if_unusable
from ._layout import fit_to_width, scrollable_layout
from ._notify import report_exception, show_info
from ._plots import PlotCanvas, _style
from ._session import NOISE_CHOICE_LABELS, NOISE_FITTED, bind, get_session
from ._worker import StopWhenRemoved, WorkerRunner

#: Room asked for when saving a noise model: a GMM's .npz holds a few small arrays (a few KB).
NOISE_MODEL_BYTES = 16 * 1024
SOURCE_CALIBRATION_LAYER = "Calibration stack (layer)"
SOURCE_CALIBRATION_FILE = "Calibration stack (TIFF file)"
SOURCE_PAIRS = "Noisy + clean image layers"
SOURCE_NOISY = "Noisy images alone (no calibration)"


@dataclass(frozen=True)
class _FitInputs:
    """The statistics of the data being fitted (yielded first, for the plot)."""

    statistics: Any
    description: str


class NoiseModelWidget(QWidget):
    """Fit a GMM noise model from a calibration stack or noisy/clean pairs; plot, save and load it."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.runner = WorkerRunner("Noise-model fitting")
        self.statistics: Any = None
        self._pending_description = ""

        layout = scrollable_layout(self)

        form = QFormLayout()
        self.source = QComboBox()
        self.source.addItems([SOURCE_CALIBRATION_LAYER, SOURCE_CALIBRATION_FILE, SOURCE_PAIRS, SOURCE_NOISY])
        self.source.setToolTip(
            "Calibration stack: many noisy frames of a static sample (signal = per-pixel mean).\n"
            "Noisy + clean: noisy images and their clean ground truth (e.g. averages).\n"
            "Noisy images alone: the noise is estimated from the images to denoise (read as Poisson-Gaussian\n"
            "noise); no calibration data needed, a little less exact than a calibration stack."
        )
        form.addRow("Fit from", self.source)
        layout.addLayout(form)

        self.source_pages = QWidget()
        pages_layout = QVBoxLayout(self.source_pages)
        pages_layout.setContentsMargins(0, 0, 0, 0)
        # page 0: calibration layer
        page = QWidget()
        f = QFormLayout(page)
        f.setContentsMargins(0, 0, 0, 0)
        self.calibration_layer = LayerPicker(napari_viewer, prefer=self._plausible_calibration)
        f.addRow("Calibration layer", self.calibration_layer)
        pages_layout.addWidget(page)
        # page 1: calibration file
        page = QWidget()
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        self.calibration_path = QLineEdit()
        self.calibration_path.setPlaceholderText("calibration .tif")
        self.browse_calibration = QPushButton("Browse...")
        self.browse_calibration.clicked.connect(self._browse_calibration)
        row.addWidget(self.calibration_path)
        row.addWidget(self.browse_calibration)
        pages_layout.addWidget(page)
        # page 2: pairs
        page = QWidget()
        f = QFormLayout(page)
        f.setContentsMargins(0, 0, 0, 0)
        self.noisy_layer = LayerPicker(napari_viewer)
        self.clean_layer = LayerPicker(napari_viewer)
        f.addRow("Noisy layer", self.noisy_layer)
        f.addRow("Clean layer", self.clean_layer)
        pages_layout.addWidget(page)
        # page 3: noisy images alone
        page = QWidget()
        f = QFormLayout(page)
        f.setContentsMargins(0, 0, 0, 0)
        self.noisy_only_layer = LayerPicker(napari_viewer)
        f.addRow("Noisy layer", self.noisy_only_layer)
        pages_layout.addWidget(page)
        self.source.currentIndexChanged.connect(self._show_source_page)
        layout.addWidget(self.source_pages)
        self._show_source_page(0)

        self.advanced = QCollapsible("Advanced settings")
        adv = QWidget()
        f = QFormLayout(adv)
        f.setContentsMargins(0, 0, 0, 0)
        self.n_gaussians = QSpinBox()
        self.n_gaussians.setRange(1, 6)
        self.n_gaussians.setValue(3)
        self.n_coeffs = QSpinBox()
        self.n_coeffs.setRange(1, 4)
        self.n_coeffs.setValue(2)
        self.n_coeffs.setToolTip("Polynomial coefficients per parameter (2 = linear in the signal).")
        self.min_variance = QDoubleSpinBox()
        self.min_variance.setRange(0.0, 1e6)
        self.min_variance.setDecimals(3)
        self.min_variance.setSpecialValueText("auto")
        self.min_variance.setToolTip("Floor of each Gaussian's variance; 'auto' derives it from the data.")
        f.addRow("Gaussians", self.n_gaussians)
        f.addRow("Coefficients", self.n_coeffs)
        f.addRow("Variance floor", self.min_variance)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)

        buttons = QHBoxLayout()
        self.fit_button = QPushButton("Fit noise model")
        self.fit_button.clicked.connect(self.start_fit)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.runner.stop)
        buttons.addWidget(self.fit_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.status = QLabel("No noise model yet: fit one, load a .npz, or let Train estimate one from its images.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.plot = PlotCanvas(240)
        layout.addWidget(self.plot)
        self._draw_empty_plot()

        io_row = QHBoxLayout()
        self.save_button = QPushButton("Save .npz...")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_clicked)
        self.load_button = QPushButton("Load .npz...")
        self.load_button.clicked.connect(self._load_clicked)
        io_row.addWidget(self.save_button)
        io_row.addWidget(self.load_button)
        layout.addLayout(io_row)

        form = QFormLayout()
        self.choice = QComboBox()
        for key, label in NOISE_CHOICE_LABELS.items():
            self.choice.addItem(label, key)
        self.choice.setCurrentIndex(list(NOISE_CHOICE_LABELS).index(self.session.noise_choice))
        self.choice.setToolTip("What the Train widget uses as the noise model.")
        self.choice.currentIndexChanged.connect(lambda _: self.session.set_noise_choice(self.choice.currentData()))
        form.addRow("Train uses", self.choice)
        layout.addLayout(form)
        layout.addStretch(1)

        bind(self, self.session.noise_choice_changed, self._on_choice_changed)
        bind(self, self.session.noise_model_changed, self._on_noise_model_changed)
        bind(self, napari_viewer.layers.events.inserted, self._on_layer_inserted)
        bind(self, self.session.training_layers_changed, lambda *_: self.calibration_layer.reconsider_default())
        fit_to_width(self)
        self._stop_when_removed = StopWhenRemoved(self, self.runner)
        self.destroyed.connect(lambda *_: self.runner.stop_and_wait())

    # ------------------------------------------------------------------ inputs

    def _show_source_page(self, index: int) -> None:
        """Show only the input rows of the chosen source (no empty space for the others)."""
        layout = self.source_pages.layout()
        for i in range(layout.count()):
            layout.itemAt(i).widget().setVisible(i == index)

    def _plausible_calibration(self, layer: Any) -> bool:
        """A default calibration layer: a 3-D stack that is not ticked for training."""
        return layer.ndim == 3 and layer.name not in self.session.training_layer_names

    def _on_layer_inserted(self, event: Any) -> None:
        warn_if_unusable(event.value, self.session.warned_rgb_layers)

    def _browse_calibration(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Calibration stack", "", "TIFF (*.tif *.tiff)")
        if path:
            self.calibration_path.setText(path)
            self.source.setCurrentText(SOURCE_CALIBRATION_FILE)

    def _fit_data(self) -> tuple[str, tuple[np.ndarray, ...]]:
        """Copies of the data to fit, read in the GUI thread (layers may change while the worker runs)."""
        from ..io import read_tiff

        source = self.source.currentText()
        if source == SOURCE_CALIBRATION_LAYER:
            layer = self.calibration_layer.current_layer()
            if layer is None:
                raise DivNoisingError(
                    "Choose a calibration stack layer (many noisy frames of a static sample), or load one from file."
                )
            if layer.ndim != 3:
                raise DivNoisingError(
                    f"Layer '{layer.name}' is a single 2-D image; a calibration stack needs many frames "
                    "(frames, Y, X). For noisy/clean pairs choose 'Noisy + clean image layers'."
                )
            return f"calibration stack '{layer.name}'", (layer_data_copy(layer),)
        if source == SOURCE_CALIBRATION_FILE:
            path = self.calibration_path.text().strip()
            if not path:
                raise DivNoisingError("Choose a calibration TIFF file first (Browse...).")
            return f"calibration stack {Path(path).name}", (read_tiff(path),)
        if source == SOURCE_NOISY:
            layer = self.noisy_only_layer.current_layer()
            if layer is None:
                raise DivNoisingError(
                    "Choose a layer of noisy images (the images to denoise, or more of the same kind)."
                )
            return f"noisy images '{layer.name}'", (layer_data_copy(layer),)
        noisy, clean = self.noisy_layer.current_layer(), self.clean_layer.current_layer()
        if noisy is None or clean is None:
            raise DivNoisingError("Choose both a noisy and a clean image layer.")
        if noisy is clean:
            raise DivNoisingError("The noisy and the clean layer are the same layer; choose the clean ground truth.")
        return f"pairs '{noisy.name}' / '{clean.name}'", (layer_data_copy(noisy), layer_data_copy(clean))

    # ------------------------------------------------------------------ fitting

    def start_fit(self) -> None:
        """Start fitting in a thread worker (the Fit button)."""
        if self.runner.running:
            return
        try:
            description, arrays = self._fit_data()
        except DivNoisingError as exc:
            report_exception(exc, "Noise-model fitting")
            return
        settings = {
            "n_gaussians": self.n_gaussians.value(),
            "n_coeffs": self.n_coeffs.value(),
            "min_variance": self.min_variance.value() or None,
        }

        noisy_alone = self.source.currentText() == SOURCE_NOISY

        def fit_events() -> Any:
            if noisy_alone:
                pairs = noisy_image_pairs(list(as_image_stack(arrays[0], name=description)), name=description)
            elif len(arrays) == 1:
                pairs = fitting_pairs(calibration=arrays[0], name=description)
            else:
                pairs = fitting_pairs(noisy=arrays[0], clean=arrays[1], name=description)
            yield _FitInputs(empirical_noise_statistics(pairs.signal, pairs.observation),
                             pairs.description if noisy_alone else description)
            yield from fit_gmm_iter(pairs.signal, pairs.observation, integer_data=pairs.integer_data, **settings)

        self._set_running(True)
        # A determinate bar: a busy (animated) one repaints the window all the time the data are prepared.
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(f"Preparing {description}...")
        self.runner.start(lambda: latest_every(fit_events(), NoiseFitProgress, FIT_PROGRESS_INTERVAL_S,
                                                  flush=self.runner.stop_requested),
                          self._on_event, self._on_done)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, _FitInputs):
            self.statistics = event.statistics
            self._pending_description = event.description
        elif isinstance(event, NoiseFitProgress):
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
            self.progress.setValue(event.iteration)
            stage = "exploring (Adam)" if event.stage == "explore" else "polishing (L-BFGS)"
            self.status.setText(f"Fitting: {stage}, iteration {event.iteration}, NLL {event.nll:.4f} nats/pixel")
        elif isinstance(event, NoiseFitResult):
            self.progress.setRange(0, 1)
            self.progress.setValue(1)
            held = f", held-out NLL {event.heldout_nll:.4f}" if np.isfinite(event.heldout_nll) else ""
            description = f"GMM fitted to {self._pending_description}"
            self.session.set_noise_model(event.result, description)
            self.status.setText(
                f"{description}: {event.iterations} iterations in {event.seconds:.1f} s{held} nats/pixel."
            )
            self.session.set_noise_choice(NOISE_FITTED)

    def _on_done(self, stopped: bool) -> None:
        try:
            self._set_running(False)
            if stopped:
                self.status.setText("Fitting stopped; the previous noise model (if any) is kept.")
            elif self.runner.failed:
                self.status.setText("Fitting failed; see the notification.")
        except RuntimeError:  # widget already deleted
            pass

    def _set_running(self, running: bool) -> None:
        self.fit_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.load_button.setEnabled(not running)
        self.source.setEnabled(not running)
        self.save_button.setEnabled(not running and self._saveable())

    # ------------------------------------------------------------------ model, plot, files

    def _saveable(self) -> bool:
        from ..noise_models import GMMNoiseModel

        return isinstance(self.session.noise_model, GMMNoiseModel)

    def _on_noise_model_changed(self, model: Any) -> None:
        self.save_button.setEnabled(self._saveable() and not self.runner.running)
        self.draw_plot()

    def _on_choice_changed(self, choice: str) -> None:
        index = list(NOISE_CHOICE_LABELS).index(choice)
        if self.choice.currentIndex() != index:
            self.choice.setCurrentIndex(index)

    def _draw_empty_plot(self) -> None:
        with _style():
            ax = self.plot.ax
            ax.clear()
            ax.set_xlabel("signal (grey values)")
            ax.set_ylabel("noise variance")
            ax.text(0.5, 0.5, "the fitted noise model appears here", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
            self.plot.draw_idle()

    def draw_plot(self) -> None:
        """Draw variance against signal for the session's noise model (and the fitted data's, if any)."""
        from ..plotting import plot_noise_model

        model = self.session.noise_model
        if model is None:
            self._draw_empty_plot()
            return
        with _style():
            self.plot.ax.clear()
            plot_noise_model(self.plot.ax, model, statistics=self.statistics, label="GMM")
            self.plot.ax.set_title("")
            # Short axis labels: the long ones of the saved plot do not fit a dock-sized figure.
            self.plot.ax.set_xlabel("signal (grey values)")
            self.plot.ax.set_ylabel("noise variance (grey values$^2$)")
            legend = self.plot.ax.get_legend()
            if legend is not None:
                for text in legend.get_texts():
                    if text.get_text().startswith("measured"):
                        text.set_text("measured (binned)")
            self.plot.draw_idle()

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save noise model", "noise_model.npz", "Noise model (*.npz)")
        if path:
            self.save_noise_model(path)

    def _load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load noise model", "", "Noise model (*.npz)")
        if path:
            self.load_noise_model(path)

    def save_noise_model(self, path: str | Path) -> Path | None:
        """Save the session's GMM noise model as a reference-layout ``.npz`` (the file dialog asked before overwriting).

        The place is checked first; any failure is one notification and the noise model stays in the session.
        """
        from ..atomic import check_output_file
        from ..noise_model_io import save_gmm_npz

        path = Path(path)
        if path.suffix.lower() != ".npz":
            path = path.with_suffix(".npz")
        try:
            check_output_file(path, force=True, planned_bytes=NOISE_MODEL_BYTES, what="noise model")
            written = save_gmm_npz(self.session.noise_model, path, self.session.noise_model_description)
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Saving the noise model")
            return None
        show_info(f"Noise model saved to {written}")
        return written

    def load_noise_model(self, path: str | Path) -> bool:
        """Load a ``.npz`` GMM noise model into the session (and the plot)."""
        from ..noise_model_io import load_gmm_npz

        try:
            model = load_gmm_npz(path)
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Loading the noise model")
            return False
        self.statistics = None
        description = f"GMM loaded from {Path(path).name}"
        self.session.set_noise_model(model, description)
        self.session.set_noise_choice(NOISE_FITTED)
        self.status.setText(description)
        return True

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.runner.stop_and_wait()
        super().closeEvent(event)
