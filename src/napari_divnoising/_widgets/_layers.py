"""Layer pickers that list only single-channel image layers, kept in sync with the viewer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QListWidget, QListWidgetItem

from ..errors import DivNoisingError
from ..outputs import result_kind
from ._notify import show_warning


def is_result_layer(layer: Any) -> bool:
    """Whether ``layer`` holds a DivNoising result (MMSE, samples...), marked in its metadata."""
    return result_kind(layer.metadata) is not None


def is_usable_image(layer: Any) -> bool:
    """Whether ``layer`` is a single-channel 2-D image or 3-D stack Image layer that is not a result."""
    from napari.layers import Image

    return isinstance(layer, Image) and not layer.rgb and layer.ndim in (2, 3) and not is_result_layer(layer)


def warn_if_unusable(layer: Any, warned: set[int]) -> None:
    """Tell the user once why an RGB or >3-D image layer is not offered in the pickers."""
    from napari.layers import Image

    if not isinstance(layer, Image) or is_usable_image(layer) or is_result_layer(layer) or id(layer) in warned:
        return
    warned.add(id(layer))
    if layer.rgb:
        show_warning(
            f"Layer '{layer.name}' is RGB; DivNoising needs single-channel images, so it is not offered. "
            "Right-click the layer > Split RGB and use one channel."
        )
    else:
        show_warning(
            f"Layer '{layer.name}' has {layer.ndim} dimensions; DivNoising takes 2-D images or 3-D stacks, "
            "so it is not offered. Split the channels (right-click > Split Stack) first."
        )


#: Axis labels that mark a channel axis (compared in lower case).
CHANNEL_LABELS = ("c", "ch", "channel", "channels")


def check_layer_axes(layer: Any) -> None:
    """Refuse a layer whose axes include channels: by its axis labels, or by the metadata of its file.

    napari's own TIFF reader opens a two-channel (CYX) OME-TIFF or ImageJ file as a plain 3-D layer;
    its frames would then be taken as images of one channel. The file's metadata say otherwise, so the
    core's check (:func:`~napari_divnoising.io.tiff_channel_error`) is asked about the layer's source.

    Raises
    ------
    DivNoisingError
        Naming the layer, the channel count and what to do.
    """
    from ..io import tiff_channel_error

    shape = tuple(int(n) for n in (layer.data[0] if getattr(layer, "multiscale", False) else layer.data).shape)
    labels = [str(label).strip().lower() for label in getattr(layer, "axis_labels", ())]
    for axis, label in enumerate(labels):
        if label in CHANNEL_LABELS and axis < len(shape) and shape[axis] > 1:
            raise DivNoisingError(
                f"Layer '{layer.name}' has {shape[axis]} channels (axis '{label}', shape "
                f"{shape}); DivNoising works on one channel at a time. Split the channels "
                "(right-click the layer > Split Stack) and train one model per channel."
            )
    source = getattr(getattr(layer, "source", None), "path", None)
    if source:
        problem = tiff_channel_error(source, shape)
        if problem is not None:
            raise DivNoisingError(
                f"Layer '{layer.name}': {problem} In napari: right-click the layer > Split Stack."
            )


def layer_data_copy(layer: Any) -> np.ndarray:
    """A private numpy copy of an image layer's data (full resolution), safe to use in a worker.

    Raises
    ------
    DivNoisingError
        When no layer is given or its axes include channels (:func:`check_layer_axes`).
    """
    if layer is None:
        raise DivNoisingError("No image layer is selected; add or open an image first.")
    check_layer_axes(layer)
    data = layer.data[0] if layer.multiscale else layer.data
    return np.array(data, copy=True)


def _connect_viewer(viewer: Any, refresh: Any, widget: Any) -> None:
    """Call ``refresh`` when layers are added, removed, moved or renamed, while ``widget`` lives."""
    from ._session import bind

    bind(widget, viewer.layers.events.inserted, refresh)
    bind(widget, viewer.layers.events.removed, refresh)
    bind(widget, viewer.layers.events.moved, refresh)

    def on_inserted(event: Any) -> None:
        bind(widget, event.value.events.name, refresh)

    bind(widget, viewer.layers.events.inserted, on_inserted)
    for layer in viewer.layers:
        bind(widget, layer.events.name, refresh)


class LayerPicker(QComboBox):
    """Combo box of the viewer's usable image layers (by name).

    Without a selection yet, the picker shows the last usable layer, or, given ``prefer``, the last
    layer for which ``prefer(layer)`` is true and else none (the user must choose).
    """

    layer_changed = Signal()

    def __init__(self, viewer: Any, parent: Any = None, prefer: Callable[[Any], bool] | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._prefer = prefer
        self.setPlaceholderText("(choose a layer)")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        _connect_viewer(viewer, self.refresh, self)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit())
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [layer.name for layer in self._viewer.layers if is_usable_image(layer)]
        if names == [self.itemText(i) for i in range(self.count())]:
            return
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        else:
            self.setCurrentIndex(self._default_index(names))
        self.blockSignals(False)
        self.layer_changed.emit()

    def _default_index(self, names: list[str]) -> int:
        if self._prefer is None:
            return len(names) - 1
        preferred = [i for i, name in enumerate(names) if self._prefer(self._viewer.layers[name])]
        return preferred[-1] if preferred else -1

    def reconsider_default(self) -> None:
        """Choose the default again if the current layer is no longer preferred (e.g. now ticked for training)."""
        layer = self.current_layer()
        if self._prefer is not None and layer is not None and not self._prefer(layer):
            names = [self.itemText(i) for i in range(self.count())]
            self.setCurrentIndex(self._default_index(names))

    def current_layer(self) -> Any:
        name = self.currentText()
        if name and name in self._viewer.layers:
            layer = self._viewer.layers[name]
            return layer if is_usable_image(layer) else None
        return None

    def set_layer(self, name: str) -> None:
        self.setCurrentText(name)


class LayerChecklist(QListWidget):
    """Checkable list of the viewer's usable image layers (choose several)."""

    checked_changed = Signal()

    def __init__(self, viewer: Any, parent: Any = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self.setMaximumHeight(90)
        _connect_viewer(viewer, self.refresh, self)
        self.itemChanged.connect(lambda _: self.checked_changed.emit())
        self.refresh()

    def refresh(self, *_: Any) -> None:
        checked = set(self.checked_names())
        names = [layer.name for layer in self._viewer.layers if is_usable_image(layer)]
        self.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.addItem(item)

    def checked_names(self) -> list[str]:
        return [
            self.item(i).text() for i in range(self.count())
            if self.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_checked(self, names: list[str]) -> None:
        for i in range(self.count()):
            item = self.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def checked_layers(self) -> list[Any]:
        return [self._viewer.layers[n] for n in self.checked_names() if n in self._viewer.layers]
