"""Tests of napari_divnoising.prediction (a package, so their module names cannot clash with other test folders)."""
