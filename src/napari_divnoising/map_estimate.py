"""Compatibility module: the MAP estimate lives in :mod:`napari_divnoising.prediction.map_estimate`."""

from .prediction.map_estimate import map_estimate, map_estimate_iter

__all__ = ["map_estimate", "map_estimate_iter"]
