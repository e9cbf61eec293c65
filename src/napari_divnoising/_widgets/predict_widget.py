"""The `Predict` dock widget: stream posterior samples, MMSE and variance into layers; MAP; export; prior samples."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..device import DEVICE_CHOICES
from ..errors import DivNoisingError
from ..events import Progress
from ..orientations import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, OFFSET_CHOICES, ORIENTATION_CHOICES, views_used
from ..outputs import OUTPUT_KINDS, PREDICTION_KINDS, result_metadata
from ..prediction import PredictionDone, PriorBatch, PriorDone, generate_prior_iter
from ..validation import prediction_range_warning
from ..workflows import PredictionUpdate, stream_prediction
from ._core import UI_UPDATE_INTERVAL_S
from ._layers import LayerPicker, layer_data_copy, warn_if_unusable
from ._layout import fit_to_width, scrollable_layout
from ._notify import report_exception, show_info, show_warning
from ._outputs import Geometry, robust_limits, set_output_layer
from ._session import bind, get_session
from ._store_output import StoreLayers, default_store_path, layer_source_path
from ._worker import ActivityProgress, StopWhenRemoved, WorkerRunner

#: Streamed results are drawn at most this often (milliseconds).
RENDER_INTERVAL_MS = 100
#: The running MMSE and variance are read (a copy) and shown (a repaint of the viewer) at most this often (seconds).
READ_INTERVAL_S = UI_UPDATE_INTERVAL_S
#: Result kinds shown with the input's contrast limits, so they compare side by side with it.
MATCHED_CONTRAST = ("mmse", "map", "samples")
#: Room asked for per exported TIFF beyond its float32 pixels (header and ImageJ metadata).
TIFF_OVERHEAD_BYTES = 64 * 1024
MODEL_SESSION = "Trained in this session"
MODEL_FILE = "From file"
OUTPUT_MEMORY = "In memory"
OUTPUT_STORE = "OME-Zarr store"
#: A results store being written is re-read for the viewer at most this often (milliseconds).
STORE_REFRESH_MS = int(1000 * UI_UPDATE_INTERVAL_S)


def _count_choice(choices: tuple[int, ...], default: int, tooltip: str) -> QComboBox:
    """A drop-down of the allowed counts (largest first) set to ``default``."""
    box = QComboBox()
    box.addItems([str(n) for n in sorted(choices, reverse=True)])
    box.setCurrentText(str(default))
    box.setToolTip(tooltip)
    return box


class PredictWidget(QWidget):
    """Denoise an image layer with a trained model: samples, MMSE, variance (and MAP), streamed live."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.runner = WorkerRunner("Prediction")
        self.prior_runner = WorkerRunner("Generating prior samples")
        self.activity = ActivityProgress(self)
        self.file_model: Any = None
        self.outputs: dict[str, np.ndarray] = {}
        self.output_layer_names: dict[str, str] = {}
        self._geometry: Geometry | None = None
        self._model_name: str | None = None
        self._n_samples_done = 0
        self._n_per_frame = 0
        self._seed: int | None = None
        self._orientations: int | None = None
        self._offsets: int | None = None
        self._input_limits: tuple[float, float] | None = None
        self._started = 0.0
        self._last_done = 0
        self._pending_update: PredictionUpdate | None = None
        self._pending_kept: np.ndarray | None = None
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_pending)
        self._store: StoreLayers | None = None
        self._store_total = 0
        self._store_done = 0
        self._store_first_frame: int | None = None
        self._store_dirty = False
        self._store_timer = QTimer(self)
        self._store_timer.setSingleShot(True)
        self._store_timer.setInterval(STORE_REFRESH_MS)
        self._store_timer.timeout.connect(self._refresh_store)
        self._model_dir: tempfile.TemporaryDirectory | None = None

        layout = scrollable_layout(self)
        form = QFormLayout()
        self.model_source = QComboBox()
        self.model_source.addItems([MODEL_SESSION, MODEL_FILE])
        self.model_source.currentTextChanged.connect(lambda _: self._update_model_label())
        form.addRow("Model", self.model_source)
        file_row = QHBoxLayout()
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("model file (.pt)")
        self.model_path.editingFinished.connect(self._model_path_edited)
        self.browse_model = QPushButton("Browse...")
        self.browse_model.clicked.connect(self._browse_model)
        file_row.addWidget(self.model_path, 1)
        file_row.addWidget(self.browse_model)
        form.addRow("Model file", file_row)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        form.addRow("", self.model_label)
        self.image_layer = LayerPicker(napari_viewer)
        form.addRow("Image", self.image_layer)
        self.n_samples = QSpinBox()
        self.n_samples.setRange(1, 100000)
        self.n_samples.setValue(100)
        self.n_samples.setToolTip("Posterior samples averaged into the MMSE (the gain flattens after ~100-1000).")
        form.addRow("Samples", self.n_samples)
        self.keep_samples = QSpinBox()
        self.keep_samples.setRange(0, 1000)
        self.keep_samples.setValue(20)
        self.keep_samples.setToolTip("How many samples to keep in the <image>_samples layer (memory!).")
        form.addRow("Samples shown", self.keep_samples)
        self.compute_map = QCheckBox("MAP estimate")
        self.compute_map.setToolTip("Also compute the most likely image: the mode of the samples, by mean shift.")
        form.addRow("", self.compute_map)
        self.orientations = _count_choice(
            ORIENTATION_CHOICES, DEFAULT_ORIENTATIONS,
            "The samples of each frame are spread over this many rotations and mirror images of it, which\n"
            "averages the network's orientation-dependent errors out of the MMSE (1: the frame as it is).\n"
            "An OME-Zarr store uses 1.")
        form.addRow("Orientations", self.orientations)
        self.offsets = _count_choice(
            OFFSET_CHOICES, DEFAULT_OFFSETS,
            "2: each orientation is also seen shifted by half a latent cell, so that the network's grid falls\n"
            "on other pixels, and the samples are spread over both grids (1: the grid as it falls).\n"
            "An OME-Zarr store uses 1.")
        form.addRow("Grid offsets", self.offsets)
        self.device = QComboBox()
        self.device.addItems(list(DEVICE_CHOICES))
        self.device.setEditable(True)  # e.g. cuda:1
        self.device.setToolTip("Where to predict: auto (a GPU when there is one), cpu, cuda, cuda:N or mps.")
        form.addRow("Device", self.device)
        self.output_mode = QComboBox()
        self.output_mode.addItems([OUTPUT_MEMORY, OUTPUT_STORE])
        self.output_mode.setToolTip(
            "In memory: results stream into layers (the stack must fit in memory).\n"
            "OME-Zarr store: each frame is written to disk as it finishes and shown lazily; for stacks that do "
            "not fit in memory. Predict again with the same store resumes a stopped run."
        )
        self.output_mode.currentTextChanged.connect(lambda _: self._update_output_rows())
        form.addRow("Results", self.output_mode)
        self.store_row = QWidget()
        store_layout = QHBoxLayout(self.store_row)
        store_layout.setContentsMargins(0, 0, 0, 0)
        self.store_path = QLineEdit()
        self.store_path.setPlaceholderText("results.ome.zarr")
        self.store_path.setToolTip("The OME-Zarr results store (a folder ending in .zarr).")
        self.store_path.textEdited.connect(lambda _: setattr(self, "_store_path_auto", False))
        self.browse_store = QPushButton("Browse...")
        self.browse_store.clicked.connect(self._browse_store)
        store_layout.addWidget(self.store_path, 1)
        store_layout.addWidget(self.browse_store)
        form.addRow("Store", self.store_row)
        self._store_label = form.labelForField(self.store_row)
        self._store_path_auto = True
        self.image_layer.layer_changed.connect(self._update_output_rows)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.start_prediction)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.runner.stop)
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.device_label = QLabel("Device: -")
        layout.addWidget(self.device_label)
        self.status = QLabel("Choose a model and an image, then Predict.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        export_form = QFormLayout()
        folder_row = QHBoxLayout()
        self.export_folder = QLineEdit()
        self.export_folder.setPlaceholderText("folder for the TIFFs")
        self.browse_folder = QPushButton("Browse...")
        self.browse_folder.clicked.connect(self._browse_folder)
        folder_row.addWidget(self.export_folder, 1)
        folder_row.addWidget(self.browse_folder)
        export_form.addRow("Export to", folder_row)
        layout.addLayout(export_form)
        self.export_button = QPushButton("Export TIFFs")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        layout.addWidget(self.export_button)

        prior_row = QHBoxLayout()
        self.prior_count = QSpinBox()
        self.prior_count.setRange(1, 100)
        self.prior_count.setValue(4)
        self.prior_size = QSpinBox()
        self.prior_size.setRange(16, 2048)
        self.prior_size.setSingleStep(16)
        self.prior_size.setValue(128)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setToolTip("Draw synthetic images from the model's prior (z ~ N(0, I)).")
        self.generate_button.clicked.connect(self.generate)
        self.prior_size.setToolTip("Side of the square prior samples in pixels.")
        prior_row.addWidget(self.prior_count, 1)
        prior_row.addWidget(self.generate_button)
        prior_form = QFormLayout()  # two rows: one row of five widgets is too wide for a narrow dock
        prior_form.addRow("Prior samples", prior_row)
        prior_form.addRow("Prior size", self.prior_size)
        layout.addLayout(prior_form)
        layout.addStretch(1)

        bind(self, self.session.trained_model_changed, lambda *_: self._update_model_label())
        bind(self, napari_viewer.layers.events.inserted,
            lambda e: warn_if_unusable(e.value, self.session.warned_rgb_layers)
        )
        self._update_output_rows()
        fit_to_width(self)
        self._stop_when_removed = StopWhenRemoved(self, self.runner, self.prior_runner)
        self.destroyed.connect(lambda *_: (self.runner.stop_and_wait(), self.prior_runner.stop_and_wait()))
        self._update_model_label()

    # ------------------------------------------------------------------ model

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", "DivNoising model (*.pt);;All files (*)")
        if path:
            self.model_path.setText(path)
            self._model_path_edited()

    def _model_path_edited(self) -> None:
        path = self.model_path.text().strip()
        if not path:
            return
        self.model_source.setCurrentText(MODEL_FILE)
        self.load_model_file(path)

    def load_model_file(self, path: str | Path) -> bool:
        """Load a model file to predict with."""
        from ..model_io import load_model

        try:
            self.file_model = load_model(path)
        except (DivNoisingError, OSError) as exc:
            self.file_model = None
            report_exception(exc, "Loading the model")
            self._update_model_label()
            return False
        self.model_path.setText(str(path))
        self.model_source.setCurrentText(MODEL_FILE)
        self._update_model_label()
        return True

    def current_model(self) -> Any:
        if self.model_source.currentText() == MODEL_FILE:
            return self.file_model
        return self.session.trained_model

    def _update_model_label(self) -> None:
        model = self.current_model()
        if model is None:
            text = ("No model yet: train one in the Train widget or load a file."
                    if self.model_source.currentText() == MODEL_SESSION else "Choose a model file.")
        else:
            steps = (model.history or {}).get("steps")
            text = f"Model '{model.name}'" + (f", {steps} training steps" if steps else "")
        self.model_label.setText(text)

    # ------------------------------------------------------------------ output

    def _update_output_rows(self) -> None:
        """Show the store row only for store output; propose a store next to the image while the user has not chosen."""
        to_store = self.output_mode.currentText() == OUTPUT_STORE
        self.store_row.setVisible(to_store)
        if self._store_label is not None:
            self._store_label.setVisible(to_store)
        layer = self.image_layer.current_layer()
        if to_store and layer is not None and (self._store_path_auto or not self.store_path.text().strip()):
            self.store_path.setText(str(default_store_path(layer)))
            self._store_path_auto = True

    def _browse_store(self) -> None:
        start = self.store_path.text().strip() or str(Path.home())
        path, _ = QFileDialog.getSaveFileName(
            self, "Results store", start, "OME-Zarr store (*.ome.zarr *.zarr);;All files (*)",
            options=QFileDialog.Option.DontConfirmOverwrite,  # an existing store is checked (resume or ask) on Predict
        )
        if path:
            if not path.lower().endswith(".zarr"):
                path += ".ome.zarr"
            self.store_path.setText(path)
            self._store_path_auto = False

    def _confirm_replace_store(self, problem: str) -> bool:
        answer = QMessageBox.question(
            self, "Replace the results store?",
            f"{problem}.\n\nDelete it and start over? (No keeps it; choose another store then.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _model_file_for_store(self, model: Any) -> Path:
        """The model's file: the loaded file, or the session's model saved to a private temporary file.

        Saving is deterministic, so the same session model resumes its store.
        """
        from ..model_io import save_model

        if self.model_source.currentText() == MODEL_FILE:
            path = Path(self.model_path.text().strip())
            if not path.is_file():
                raise DivNoisingError(f"Model file not found: {path}; load it again.")
            return path
        if self._model_dir is None:
            self._model_dir = tempfile.TemporaryDirectory(prefix="divnoising-model-")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (model.name or "model"))
        return Path(save_model(model, Path(self._model_dir.name) / f"{safe}.pt"))

    def _start_store_prediction(self, model: Any, layer: Any, device: str) -> None:
        """Predict ``layer`` into the OME-Zarr store chosen in the panel (resuming a store of the same job)."""
        from ..scale.arrays import (
            array_shape_dtype,
            full_resolution,
            matching_source,
            predict_array_to_zarr_iter,
            stack_axis_name,
        )
        from ..scale.ome import content_fingerprint, file_sha256, is_zarr_path, read_info
        from ..scale.runner import ZarrPredictionSettings, existing_store_problem
        from ._layers import check_layer_axes

        text = self.store_path.text().strip()
        if not text:
            raise DivNoisingError("Choose where to write the OME-Zarr results store (Store: Browse...).")
        out = Path(text).expanduser()
        if not is_zarr_path(out) or not out.name.lower().endswith(".zarr"):
            raise DivNoisingError(f"The results store must be a folder ending in .zarr (e.g. {out.stem}.ome.zarr).")
        check_layer_axes(layer)
        data = layer.data
        source = layer_source_path(layer)
        if source and out.resolve() == Path(source).resolve():
            raise DivNoisingError(f"{out} is the image's own file; choose another store.")
        n_samples, keep = self.n_samples.value(), self.keep_samples.value()
        settings = ZarrPredictionSettings(n_samples=n_samples, keep_samples=min(keep, n_samples),
                                          compute_map=self.compute_map.isChecked(), device=device)
        model_path = self._model_file_for_store(model)
        shape, dtype = array_shape_dtype(data)
        input_path = matching_source(source, data)  # the layer's own file when it holds this array: no copy
        fingerprint = content_fingerprint(full_resolution(data), shape) if out.exists() else None
        _, problem = existing_store_problem(out, file_sha256(model_path), model_path.name, shape, dtype, settings,
                                            fingerprint=fingerprint)
        force = False
        if problem is not None:
            if read_info(out) is None:  # a Zarr store that is not ours (maybe the user's data): never deleted
                raise DivNoisingError(f"{problem}; choose another store.")
            if not self._confirm_replace_store(problem):
                show_warning(f"{problem}; nothing was changed. Choose another store, or confirm replacing it.")
                self.status.setText("Not started: the store belongs to another prediction.")
                return
            force = True
        level = data[0] if layer.multiscale else data
        first = np.asarray(level[0] if len(shape) == 3 else level, dtype=np.float32)
        far = prediction_range_warning(model, first, name=f"Layer '{layer.name}'")
        if far:
            show_warning(far)
        geometry = Geometry.of(layer)
        axes = [stack_axis_name(geometry.axis_labels[0]), "y", "x"][-len(shape):]
        self._geometry = geometry
        self._input_limits = tuple(float(v) for v in layer.contrast_limits)
        self._store = StoreLayers(self.viewer, out, geometry, self._input_limits)
        self._store_total = self._store_done = 0
        self._store_first_frame = None
        self._store_dirty = False
        self.outputs = {}
        self._model_name = model.name
        self._set_running(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.device_label.setText(f"Device: {device}")
        self.status.setText(f"Preparing {out.name}...")
        self._started = time.monotonic()
        self.activity.start(f"DivNoising prediction of {layer.name} to {out.name}", 1)
        self.runner.start(
            lambda: predict_array_to_zarr_iter(model_path, data, out, settings, source_path=input_path,
                                               axes=axes, scale=geometry.scale, force=force),
            self._on_store_event,
            self._on_done,
        )

    def _on_store_event(self, event: Any) -> None:
        from ..scale.events import UnitDone, ZarrPlan, ZarrPredictionDone

        store = self._store
        if store is None:
            return
        if isinstance(event, ZarrPlan):
            self._store_total, self._store_done = event.total, event.already_done
            try:
                store.show()
            except Exception as exc:  # a store the viewer cannot show: the run goes on, the user is told once
                report_exception(exc, "Showing the results store")
            self.progress.setRange(0, max(1, event.total))
            self.progress.setValue(event.already_done)
            self.activity.set(event.already_done, event.total)
            resumed = f", {event.already_done} finished earlier" if event.already_done else ""
            self.status.setText(f"Writing {event.total} unit(s) to {Path(event.path).name}{resumed}...")
        elif isinstance(event, UnitDone):
            self._store_done = event.done
            if self._store_first_frame is None:
                self._store_first_frame = event.frame
            self.progress.setValue(event.done)
            self.activity.set(event.done, event.total)
            self.status.setText(f"Frame {event.frame + 1} written: {event.done} of {event.total} unit(s) done.")
            self._store_dirty = True
            if not self._store_timer.isActive():
                self._store_timer.start()
        elif isinstance(event, ZarrPredictionDone):
            self._store_done = event.total
            self._store_dirty = True
            self._refresh_store()

    def _refresh_store(self) -> None:
        """Show the units finished since the last refresh (at most every STORE_REFRESH_MS)."""
        self._store_timer.stop()
        if self._store is None or not self._store_dirty:
            return
        self._store_dirty = False
        try:
            self._store.refresh(self._store_first_frame)
        except Exception as exc:  # reading back failed (store removed meanwhile?): say so, keep running
            report_exception(exc, "Showing the results store")

    # ------------------------------------------------------------------ prediction

    def start_prediction(self) -> None:
        """Start streaming samples for the chosen image (Predict button)."""
        from ..device import resolve_device

        if self.runner.running:
            return
        if self.output_mode.currentText() == OUTPUT_STORE:
            try:
                device = resolve_device(self.device.currentText())
                model = self.current_model()
                if model is None:
                    raise DivNoisingError(
                        "No model: train one in the Train widget, or choose 'From file' and load one.")
                layer = self.image_layer.current_layer()
                if layer is None:
                    raise DivNoisingError("Choose an image layer to denoise.")
                self._start_store_prediction(model, layer, str(device))
            except Exception as exc:  # noqa: BLE001 - one notification (unexpected ones logged), never a traceback
                report_exception(exc, "Prediction")
                if not self.runner.running:
                    self.activity.close()
                    self._set_running(False)
            return
        self._store = None
        try:
            device = resolve_device(self.device.currentText())
            model = self.current_model()
            if model is None:
                raise DivNoisingError("No model: train one in the Train widget, or choose 'From file' and load one.")
            layer = self.image_layer.current_layer()
            if layer is None:
                raise DivNoisingError("Choose an image layer to denoise.")
            image = layer_data_copy(layer)
            far = prediction_range_warning(model, image, name=f"Layer '{layer.name}'")
            self._geometry = Geometry.of(layer)
            self._input_limits = tuple(float(v) for v in layer.contrast_limits)
        except DivNoisingError as exc:
            report_exception(exc, "Prediction")
            return
        if far:
            show_warning(far)
        n_samples, keep = self.n_samples.value(), self.keep_samples.value()
        want_map = self.compute_map.isChecked()
        orientations, offsets = int(self.orientations.currentText()), int(self.offsets.currentText())
        self._orientations, self._offsets = views_used(n_samples, orientations, offsets)  # fewer samples: fewer views
        self.outputs = {}
        self._model_name = model.name
        self._n_samples_done = 0
        self._last_done = 0
        self._n_per_frame = n_samples
        self._seed = None
        self._pending_update, self._pending_kept = None, None
        self._set_running(True)
        self.progress.setRange(0, n_samples)
        self.progress.setValue(0)
        self.device_label.setText(f"Device: {device}")
        self.status.setText(f"Sampling {n_samples} posterior samples per frame of '{layer.name}'...")
        self._started = time.monotonic()
        self.activity.start(f"DivNoising prediction of {layer.name}", n_samples)
        self.runner.start(
            lambda: stream_prediction(model, image, n_samples, keep_samples=keep, compute_map=want_map,
                                      device=device, orientations=orientations, offsets=offsets,
                                      min_interval_s=READ_INTERVAL_S,
                                      flush=self.runner.stop_requested),
            self._on_event,
            self._on_done,
        )

    def _metadata(self, kind: str) -> dict[str, Any]:
        assert self._geometry is not None
        return result_metadata(kind, source=self._geometry.name, model_name=self._model_name,
                               n_samples=self._n_samples_done, seed=self._seed, orientations=self._orientations,
                               offsets=self._offsets)

    def _on_event(self, event: Any) -> None:
        geometry = self._geometry
        if geometry is None:
            return
        if isinstance(event, PredictionUpdate):
            # Shown at most every RENDER_INTERVAL_MS: when the viewer is slower than the sampler, the
            # queued updates only replace the pending one instead of each redrawing the layers.
            if event.kept_samples is not None:
                self._pending_kept = event.kept_samples
            self._pending_update = event
            if not self._render_timer.isActive():
                self._render_timer.start()
        elif isinstance(event, Progress):
            self._render_pending()
            self.status.setText(event.message or f"{event.done} of {event.total}")
        elif isinstance(event, PredictionDone):
            self._render_pending()
            result = event.result
            self._n_samples_done = result.n_samples or self._n_samples_done
            self._seed = result.seed
            self._show("mmse", result.mmse, geometry)
            self._show("variance", result.variance, geometry)
            if "samples" in self.outputs:
                self._show("samples", self.outputs["samples"], geometry.with_leading_axis("sample"))
            if result.map is not None:
                self._show("map", result.map, geometry)

    def _render_pending(self) -> None:
        """Show the latest streamed update (if one is waiting)."""
        self._render_timer.stop()
        event, kept = self._pending_update, self._pending_kept
        self._pending_update, self._pending_kept = None, None
        geometry = self._geometry
        if event is None or geometry is None:
            return
        self._n_samples_done = min(event.done, self._n_per_frame)
        self._last_done = event.done
        self._show("mmse", event.mmse, geometry)
        self._show("variance", event.variance, geometry)
        if kept is not None and len(kept):
            self._show("samples", kept, geometry.with_leading_axis("sample"))
        if self.progress.maximum() != event.total:
            self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        self.activity.set(event.done, event.total)
        per_frame = max(1, self._n_per_frame)
        frames = event.total // per_frame
        elapsed = time.monotonic() - self._started
        rate = f", {event.done / elapsed:.1f} samples/s" if elapsed > 0 else ""
        if frames > 1:
            frame = min(event.done // per_frame, frames - 1) if event.done < event.total else frames - 1
            done_here = event.done - frame * per_frame
            self.status.setText(f"Frame {frame + 1} of {frames}: {done_here} of {per_frame} samples{rate}")
        else:
            self.status.setText(f"{event.done} of {event.total} samples{rate}")

    def _show(self, kind: str, data: np.ndarray, geometry: Geometry) -> None:
        """Show one result in its layer (marked with its kind and provenance) and keep it for export."""
        self.outputs[kind] = data
        if kind in MATCHED_CONTRAST and self._input_limits is not None:
            limits = self._input_limits
        else:
            shown = data[0] if OUTPUT_KINDS[kind].sample_axis else data
            limits = robust_limits(shown, floor_zero=OUTPUT_KINDS[kind].floor_zero)
        layer = set_output_layer(self.viewer, OUTPUT_KINDS[kind].layer_name(geometry.name), data, geometry,
                                 self._metadata(kind), contrast_limits=limits)
        self.output_layer_names[kind] = layer.name

    def _on_done(self, stopped: bool) -> None:
        if self._store is not None:
            self._on_store_done(stopped)
            return
        try:
            self._render_pending()
            self.activity.close()
            self._set_running(False)
            if self.runner.failed:
                self.status.setText("Prediction failed; see the notification.")
            elif stopped:
                note = ""
                reached = self._reached_frames()
                if reached is not None:
                    total = self.outputs["mmse"].shape[0]
                    note = (f" Frames {reached + 1}-{total} were not finished; Export writes only the {reached} "
                            "finished frames (as *_partial files).") if reached < total else ""
                self.status.setText(
                    f"Stopped after {self.progress.value()} samples; the MMSE and variance so far are valid.{note}"
                )
            elif "mmse" in self.outputs:
                frames = self.outputs["mmse"].shape[0] if self._is_stack() else 1
                counts = f"{self._n_samples_done} samples" + (
                    f" per frame, {frames} frames" if frames > 1 else "")
                self.status.setText(f"Done: {counts}. Export the results as TIFFs below.")
            self.export_button.setEnabled(bool(self.outputs))
        except RuntimeError:  # widget already deleted
            pass

    def _on_store_done(self, stopped: bool) -> None:
        try:
            self._store_dirty = True
            self._refresh_store()
            self.activity.close()
            self._set_running(False)
            assert self._store is not None
            name = self._store.path.name
            if self.runner.failed:
                self.status.setText("Prediction failed; see the notification. Finished frames stay in the store.")
            elif stopped or self._store_done < self._store_total:
                self.status.setText(
                    f"Stopped: {self._store_done} of {self._store_total} unit(s) are in {name}. "
                    "Predict again with the same store and settings to resume."
                )
            else:
                self.status.setText(f"Done: all {self._store_total} unit(s) are in {name} (File > Open reopens it).")
        except RuntimeError:  # widget already deleted
            pass

    def _is_stack(self) -> bool:
        return self._geometry is not None and len(self._geometry.scale) == 3

    def _reached_frames(self) -> int | None:
        """For a stack: how many leading frames got all their samples (None for a 2-D image or no result)."""
        mmse = self.outputs.get("mmse")
        if not self._is_stack() or mmse is None:
            return None
        return min(mmse.shape[0], self._last_done // max(1, self._n_per_frame))

    def _set_running(self, running: bool) -> None:
        self.predict_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.generate_button.setEnabled(not running and not self.prior_runner.running)
        self.export_button.setEnabled(not running and bool(self.outputs))
        self.model_source.setEnabled(not running)
        for widget in (self.output_mode, self.store_path, self.browse_store):
            widget.setEnabled(not running)

    # ------------------------------------------------------------------ export

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder")
        if folder:
            self.export_folder.setText(folder)

    def _confirm_overwrite(self, existing: list[Path]) -> bool:
        names = "\n".join(p.name for p in existing)
        answer = QMessageBox.question(
            self, "Overwrite files?", f"These files exist already:\n{names}\nOverwrite them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def export(self) -> list[Path]:
        """Write the current results as TIFFs (``<image>_mmse.tif`` etc.) into the export folder, as one set.

        The folder is checked before anything is asked or written; a failure is one notification, no
        existing file is replaced by part of a set, and the results stay in the viewer to export elsewhere.
        """
        from ..atomic import StagedFiles, check_output_dir
        from ._core import write_output_tiff

        if not self.outputs or self._geometry is None:
            report_exception(DivNoisingError("Nothing to export yet; run Predict first."), "Export")
            return []
        folder_text = self.export_folder.text().strip()
        if not folder_text:
            self._browse_folder()
            folder_text = self.export_folder.text().strip()
            if not folder_text:
                return []
        folder = Path(folder_text)
        geometry, outputs = self._geometry, dict(self.outputs)
        reached = self._reached_frames()
        if reached is not None and reached < outputs["mmse"].shape[0]:
            # A stopped stack: frames never reached are left out (not written as NaN), and the files say so.
            if reached == 0:
                report_exception(DivNoisingError("No frame was finished; nothing to export."), "Export")
                return []
            geometry = dataclasses.replace(geometry, name=f"{geometry.name}_partial")
            outputs = {kind: (data[:, :reached] if OUTPUT_KINDS[kind].sample_axis else data[:reached])
                       for kind, data in outputs.items()}
        targets = {
            kind: folder / OUTPUT_KINDS[kind].file_name(geometry.name)
            for kind in PREDICTION_KINDS if kind in outputs
        }
        # The folder first (a file in the way, read-only, too little space): nothing is asked or written then.
        need = sum(4 * np.asarray(outputs[kind]).size + TIFF_OVERHEAD_BYTES for kind in targets)
        try:
            check_output_dir(folder, planned_bytes=need)
        except DivNoisingError as exc:
            report_exception(exc, "Export")
            self.status.setText("Export failed; the results are kept here. Choose another folder.")
            return []
        existing = [p for p in targets.values() if p.exists()]
        if existing and not self._confirm_overwrite(existing):
            self.status.setText("Export cancelled; no file was overwritten.")
            return []
        written: list[Path] = []
        try:
            # One unit: all files land, or the old set stays whole (a disk that fills part way).
            with StagedFiles() as staged:
                for kind, path in targets.items():
                    facts = self._metadata(kind)["divnoising"]
                    staged.stage(path, lambda tmp, kind=kind, facts=facts: write_output_tiff(
                        tmp, outputs[kind], facts, geometry))
                written = staged.commit()
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Export")
            self.status.setText("Export failed; no file was replaced and the results are kept here.")
        if written:
            show_info(f"Wrote {len(written)} TIFF file(s) to {folder}")
            self.status.setText("Exported: " + ", ".join(p.name for p in written))
        return written

    # ------------------------------------------------------------------ prior samples

    def generate(self) -> None:
        """Draw prior samples from the model into a `prior_samples` layer."""
        if self.prior_runner.running or self.runner.running:
            return
        model = self.current_model()
        if model is None:
            report_exception(DivNoisingError("No model: train or load one first."), "Generating prior samples")
            return
        count, size = self.prior_count.value(), self.prior_size.value()
        self.generate_button.setEnabled(False)

        def on_event(event: Any) -> None:
            if isinstance(event, PriorBatch):
                self.status.setText(f"Prior samples: {event.done} of {event.total}")
            elif isinstance(event, PriorDone):
                name = "prior_samples"
                geometry = Geometry(name, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ("pixel",) * 3, ("sample", "y", "x"))
                metadata = result_metadata("prior", model_name=model.name, n_samples=len(event.images))
                set_output_layer(self.viewer, name, np.asarray(event.images), geometry, metadata)

        def on_done(_: bool) -> None:
            try:
                self.generate_button.setEnabled(not self.runner.running)
            except RuntimeError:
                pass

        self.prior_runner.start(lambda: generate_prior_iter(model, count, size), on_event, on_done)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.runner.stop_and_wait()
        self.prior_runner.stop_and_wait()
        if self._model_dir is not None:
            self._model_dir.cleanup()
            self._model_dir = None
        super().closeEvent(event)
