"""Fixtures for the OME-Zarr / Dask tests: a tiny model file and OME-Zarr inputs made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ome_zarr  # noqa: F401 - the scale extra is part of the testing extra: missing is a failure, not a skip
import pytest
import torch
import zarr  # noqa: F401


def make_model(seed: int = 0, name: str = "tiny-test"):
    """An untrained tiny model whose samples still vary (decoder weights scaled up)."""
    from napari_divnoising.model import DivNoisingModel
    from napari_divnoising.network import DivNoisingVAE
    from napari_divnoising.noise_models import GaussianNoiseModel

    torch.manual_seed(seed)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    with torch.no_grad():
        net.decoder[0].weight.mul_(6.0)
        net.decoder[-1].weight.mul_(40.0)
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), 20.0, 15.0, name=name)


def write_ome_zarr(path: Path, data: np.ndarray, axes: str, pixel_size: float = 0.3, chunks=None) -> Path:
    """Write ``data`` as a single-level OME-Zarr image (NGFF 0.5, Zarr v3) with ome-zarr's writer."""
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w")
    scale = {a: pixel_size for a in axes if a in "yx"}
    units = {a: "micrometer" for a in axes if a in "yx"}
    options = {"chunks": chunks} if chunks else None
    write_image(data, root, axes=list(axes), scale_factors=(), scale=scale, axes_units=units,
                storage_options=options)
    return path


@pytest.fixture()
def write_zarr():
    """``write_zarr(path, data, axes, pixel_size=0.3, chunks=None)``: an OME-Zarr input."""
    return write_ome_zarr


@pytest.fixture()
def model_file(tmp_path):
    from napari_divnoising.model_io import save_model

    return save_model(make_model(), tmp_path / "model.pt")


@pytest.fixture()
def other_model_file(tmp_path):
    from napari_divnoising.model_io import save_model

    return save_model(make_model(seed=1, name="other"), tmp_path / "other.pt")


@pytest.fixture()
def model(model_file):
    from napari_divnoising.model_io import load_model

    return load_model(model_file)


@pytest.fixture()
def stack():
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(20, 15, (5, 72, 136)), 0, 255).astype(np.uint16)


@pytest.fixture()
def stack_zarr(tmp_path, stack):
    return write_ome_zarr(tmp_path / "stack.ome.zarr", stack, "tyx")
