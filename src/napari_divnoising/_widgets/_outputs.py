"""Output layers of the Predict widget: created once, then updated in place (scale, translate, units kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """World placement of an input image layer, copied before a run (the layer may be removed meanwhile)."""

    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    axis_labels: tuple[str, ...]

    @classmethod
    def of(cls, layer: Any) -> "Geometry":
        units = tuple(str(u) for u in getattr(layer, "units", ("pixel",) * layer.ndim))
        labels = tuple(str(a) for a in getattr(layer, "axis_labels", ()))
        if len(labels) != layer.ndim:
            labels = tuple(f"axis -{layer.ndim - i}" for i in range(layer.ndim))
        return cls(layer.name, tuple(layer.scale), tuple(layer.translate), units, labels)

    def with_leading_axis(self, label: str) -> "Geometry":
        """Placement of an array with one extra leading axis (e.g. the sample index)."""
        return Geometry(self.name, (1.0, *self.scale), (0.0, *self.translate), ("pixel", *self.units),
                        (label, *self.axis_labels))


def robust_limits(data: np.ndarray, low: float = 0.5, high: float = 99.8, floor_zero: bool = False) -> tuple[float, float]:
    """Contrast limits from percentiles of a subsample (fast on large arrays)."""
    flat = np.asarray(data).reshape(-1)
    step = max(1, flat.size // 200_000)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, (low, high)))
    if floor_zero:
        lo = 0.0
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def set_output_layer(
    viewer: Any, name: str, data: np.ndarray, geometry: Geometry, *, colormap: str = "gray",
    contrast_limits: tuple[float, float] | None = None, reset_step: bool = False,
) -> Any:
    """Update the image layer ``name`` with ``data`` (creating it if missing) and return it.

    Re-running updates the same layer instead of adding duplicates; a layer of
    another type with the same name is left alone and a new name is used.
    """
    from napari.layers import Image

    limits = contrast_limits or robust_limits(data)
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and not isinstance(layer, Image):
        name = f"{name} (DivNoising)"
        layer = viewer.layers[name] if name in viewer.layers else None
    if layer is None or layer.ndim != data.ndim:
        if layer is not None:
            viewer.layers.remove(layer)
        layer = viewer.add_image(
            data, name=name, scale=geometry.scale, translate=geometry.translate, units=geometry.units,
            axis_labels=geometry.axis_labels, colormap=colormap, contrast_limits=limits,
        )
        return layer
    layer.data = data
    layer.scale = geometry.scale
    layer.translate = geometry.translate
    try:
        layer.units = geometry.units
        layer.axis_labels = geometry.axis_labels
    except (ValueError, TypeError):  # an odd unit string: placement matters more than labels
        pass
    layer.contrast_limits = limits
    return layer
