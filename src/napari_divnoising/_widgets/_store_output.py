"""The Predict panel's OME-Zarr output: where the store goes, and its results shown as lazy layers.

The layers are the ones napari shows when it opens the store (:func:`read_results_layers`: same
names, colours and ``layer.metadata``), placed on the input layer. They are dask arrays over the
store, added once; as units finish they get fresh dask arrays over the same store (napari caches
dask chunks by array name, so re-slicing the old arrays would keep showing the empty chunks).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import OUTPUT_KINDS, result_kind
from ._outputs import Geometry, _result_layer, robust_limits

#: The store's name is the image layer's name with this suffix (its layers are then ``<layer>_divnoising_mmse``...).
STORE_SUFFIX = "_divnoising.ome.zarr"
#: Result kinds shown with the input's contrast limits (as the in-memory results).
MATCHED_CONTRAST = ("mmse", "map", "samples")


def default_store_path(layer: Any) -> Path:
    """``<layer name>_divnoising.ome.zarr`` next to the layer's file, or in the home folder."""
    safe = re.sub(r"[^\w.-]+", "_", str(layer.name)).strip("._") or "image"
    source = getattr(getattr(layer, "source", None), "path", None)
    folder = Path(source).parent if source else Path.home()
    return folder / f"{safe}{STORE_SUFFIX}"


def layer_source_path(layer: Any) -> str | None:
    """The file a layer was read from (napari's ``layer.source.path``), if any."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


class StoreLayers:
    """The lazy result layers of one results store, on the placement of the input layer."""

    def __init__(self, viewer: Any, path: Path, geometry: Geometry, input_limits: tuple[float, float] | None) -> None:
        self.viewer = viewer
        self.path = Path(path)
        self.geometry = geometry
        self.input_limits = input_limits
        self.layers: dict[str, Any] = {}
        self._limits_set: set[str] = set()

    def _read(self) -> list[tuple[str, Any, dict[str, Any]]]:
        from ..scale.napari_reader import read_results_layers

        out = []
        for data, kwargs, _ in read_results_layers(str(self.path), fresh=True):
            kind = result_kind(kwargs["metadata"])
            if kind is not None:
                out.append((kind, data, kwargs))
        return out

    def _placement(self, kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        g = self.geometry
        if OUTPUT_KINDS[kind].sample_axis:
            return (1.0, *g.scale), (0.0, *g.translate)
        return tuple(g.scale), tuple(g.translate)

    def show(self) -> None:
        """Add the store's layers, or take over this plugin's layers of the same names and kinds."""
        for kind, data, kwargs in self._read():
            name, layer = _result_layer(self.viewer, kwargs["name"], kind)
            multiscale = bool(kwargs.get("multiscale", False))
            scale, translate = self._placement(kind)
            limits = self.input_limits if kind in MATCHED_CONTRAST and self.input_limits else (0.0, 1.0)
            index = None
            if layer is not None and (layer.multiscale != multiscale or layer.ndim != len(scale)):
                index = self.viewer.layers.index(layer)
                self.viewer.layers.remove(layer)  # a result of another shape: replaced in place, not duplicated
                layer = None
            if layer is None:
                layer = self.viewer.add_image(
                    data, name=name, scale=scale, translate=translate, colormap=kwargs["colormap"],
                    metadata=kwargs["metadata"], multiscale=multiscale, contrast_limits=limits,
                    visible=kwargs.get("visible", True),
                )
                if index is not None:
                    self.viewer.layers.move(self.viewer.layers.index(layer), index)
            else:
                layer.data = data
                layer.scale, layer.translate = scale, translate
                layer.metadata = dict(kwargs["metadata"])
                layer.colormap = kwargs["colormap"]
                layer.contrast_limits = limits
            self.layers[kind] = layer
            if kind in MATCHED_CONTRAST and self.input_limits:
                self._limits_set.add(kind)

    def refresh(self, finished_frame: int | None = None) -> None:
        """Show the units finished since the last call (fresh dask arrays over the store, same layers).

        ``finished_frame``: a frame known to be complete, to set the contrast of kinds without a
        preset one from it (once). Does nothing before :meth:`show` (e.g. the store could not be made).
        """
        if not self.layers:
            return
        for kind, data, _ in self._read():
            layer = self.layers.get(kind)
            if layer is None or layer not in self.viewer.layers:
                continue
            if bool(layer.multiscale) != isinstance(data, list):
                continue
            layer.data = data
            if kind not in self._limits_set and finished_frame is not None:
                layer.contrast_limits = self._limits_of(kind, data, finished_frame)
                self._limits_set.add(kind)

    def _limits_of(self, kind: str, data: Any, frame: int) -> tuple[float, float]:
        level = data[-1] if isinstance(data, list) else data
        if OUTPUT_KINDS[kind].sample_axis:
            level = level[0]
        shown = np.asarray(level[frame] if level.ndim == 3 else level)
        return robust_limits(shown, floor_zero=OUTPUT_KINDS[kind].floor_zero)
