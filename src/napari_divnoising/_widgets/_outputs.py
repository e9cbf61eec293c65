"""Output layers of the Predict widget: created once, then updated in place (scale, translate, units kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..outputs import output_kind, result_facts, result_kind


@dataclass(frozen=True)
class Geometry:
    """World placement of an input image layer, copied before a run (the layer may be removed meanwhile)."""

    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...]
    axis_labels: tuple[str, ...]

    @classmethod
    def of(cls, layer: Any) -> Geometry:
        units = tuple(str(u) for u in layer.units)
        labels = tuple(str(a) for a in layer.axis_labels)
        if len(labels) != layer.ndim:
            labels = tuple(f"axis -{layer.ndim - i}" for i in range(layer.ndim))
        return cls(layer.name, tuple(layer.scale), tuple(layer.translate), units, labels)

    def with_leading_axis(self, label: str) -> Geometry:
        """Placement of an array with one extra leading axis (e.g. the sample index)."""
        return Geometry(self.name, (1.0, *self.scale), (0.0, *self.translate), ("pixel", *self.units),
                        (label, *self.axis_labels))


def robust_limits(
    data: np.ndarray, low: float = 0.5, high: float = 99.8, floor_zero: bool = False
) -> tuple[float, float]:
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


def _result_layer(viewer: Any, name: str, kind: str) -> tuple[str, Any]:
    """The name to use for a ``kind`` result called ``name``, and the layer to update (None: add one).

    Only a layer this plugin made for the same kind (marked in its metadata) is updated; a user's
    layer that merely has the name is left alone and the result gets a name of its own.
    """
    from napari.layers import Image

    candidate = name
    for suffix in ("", " (DivNoising)", *(f" (DivNoising {i})" for i in range(2, 100))):
        candidate = f"{name}{suffix}"
        if candidate not in viewer.layers:
            return candidate, None
        layer = viewer.layers[candidate]
        if isinstance(layer, Image) and result_kind(layer.metadata) == kind:
            return candidate, layer
    return candidate, None


def set_output_layer(
    viewer: Any, name: str, data: np.ndarray, geometry: Geometry, metadata: dict[str, Any], *,
    contrast_limits: tuple[float, float] | None = None,
) -> Any:
    """Show a result in the image layer ``name`` (created if missing) and return the layer.

    ``metadata`` is the result's :func:`~napari_divnoising.outputs.result_metadata`: it gives the
    kind (colormap, contrast floor) and marks the layer as a result. Re-running updates the same
    layer instead of adding duplicates; layers the user made are never changed.
    """
    facts = result_facts(metadata)
    kind = output_kind(facts["kind"])
    limits = contrast_limits or robust_limits(data, floor_zero=kind.floor_zero)
    name, layer = _result_layer(viewer, name, kind.name)
    labels_before = tuple(viewer.dims.axis_labels)
    if layer is not None and layer.ndim != data.ndim:
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_image(
            data, name=name, scale=geometry.scale, translate=geometry.translate, units=geometry.units,
            axis_labels=geometry.axis_labels, colormap=kind.colormap, contrast_limits=limits, metadata=metadata,
        )
        _fit_slider_labels(viewer, labels_before)
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
    layer.metadata = {**layer.metadata, **metadata}
    _fit_slider_labels(viewer, labels_before)
    return layer


def _fit_slider_labels(viewer: Any, labels_before: tuple[str, ...]) -> None:
    """Make napari widen the slider labels after a result renamed an axis that was already there.

    napari (0.5 to 0.9 at least) sets a renamed axis label with the label's signals blocked, so the
    label keeps the width of the old name: "sample" replacing "-3" (a calibration stack's frame axis)
    shows as an ellipsis. Re-emitting the dims order makes napari resize every slider label.
    """
    if tuple(viewer.dims.axis_labels) != labels_before:
        viewer.dims.events.order(value=viewer.dims.order)
