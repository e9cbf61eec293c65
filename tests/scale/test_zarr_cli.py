"""`divnoising predict --out results.ome.zarr`: same numbers as the TIFF path, one-line errors, resume message."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_divnoising.cli import main
from napari_divnoising.scale import read_results


@pytest.fixture()
def stack_tif(tmp_path, stack):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"axes": "TYX", "unit": "um"})
    return path


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    return err


def test_zarr_and_tiff_paths_give_the_same_numbers(tmp_path, model_file, stack_tif, stack_zarr, capsys):
    common = ["predict", "--model", str(model_file), "--samples", "5", "--save-samples", "2", "--seed", "9"]
    # A store predicts each frame as it is: the TIFF path does so with one orientation.
    assert main([*common, "--input", str(stack_tif), "--out-dir", str(tmp_path / "tif"), "--orientations", "1",
                 "--offsets", "1"]) == 0
    assert main([*common, "--input", str(stack_zarr), "--out", str(tmp_path / "a.ome.zarr")]) == 0
    assert main([*common, "--input", str(stack_tif), "--out", str(tmp_path / "b.ome.zarr")]) == 0
    assert "wrote" in capsys.readouterr().out
    mmse = tifffile.imread(tmp_path / "tif" / "stack_mmse.tif")
    variance = tifffile.imread(tmp_path / "tif" / "stack_variance.tif")
    for store in ("a.ome.zarr", "b.ome.zarr"):
        res = read_results(tmp_path / store)
        np.testing.assert_array_equal(res["mmse"][0][...], mmse)
        np.testing.assert_array_equal(res["variance"][...], variance)
        assert res["axes"] == ["t", "y", "x"] and res["scale"][0] == pytest.approx([1.0, 0.3, 0.3])


def test_input_dtype_and_clip(tmp_path, model_file, stack_zarr):
    out = tmp_path / "r.ome.zarr"
    assert main(["predict", "--model", str(model_file), "--input", str(stack_zarr), "--out", str(out),
                 "--samples", "3", "--save-samples", "1", "--dtype", "input", "--clip", "--seed", "1"]) == 0
    res = read_results(out)
    assert res["mmse"][0].dtype == np.uint16 and res["mmse"][1].dtype == np.uint16
    assert res["samples"].dtype == np.uint16 and res["variance"].dtype == np.float32


def test_errors_are_one_line_and_resume_is_announced(
    tmp_path, model_file, other_model_file, stack_zarr, stack_tif, capsys
):
    base = ["predict", "--model", str(model_file), "--input", str(stack_zarr), "--samples", "2", "--save-samples", "0"]
    err = _one_line_error(capsys, main([*base, "--out-dir", str(tmp_path / "tifs")]))
    assert "--out results.ome.zarr" in err
    err = _one_line_error(capsys, main([*base, "--input", str(stack_zarr), "--out", str(tmp_path / "two.ome.zarr")]))
    assert "one store per input" in err
    err = _one_line_error(capsys, main(["predict", "--model", str(model_file), "--input", str(stack_zarr)]))
    assert "add --out" in err
    err = _one_line_error(capsys, main(["predict", "--model", str(model_file), "--input", str(stack_tif)]))
    assert "--out-dir" in err
    err = _one_line_error(capsys, main(["predict", "--model", str(model_file), "--input", str(stack_tif),
                                        "--out-dir", str(tmp_path / "t"), "--workers", "2"]))
    assert "--workers and --scheduler need --out" in err

    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("0", shape=(2, 8, 8), dtype="uint8")
    err = _one_line_error(capsys, main(["predict", "--model", str(model_file), "--input", str(tmp_path / "plain.zarr"),
                                        "--out", str(tmp_path / "p.ome.zarr")]))
    assert "no OME-Zarr image metadata" in err

    out = str(tmp_path / "r.ome.zarr")
    assert main([*base, "--out", out, "--seed", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--out", out]) == 0
    assert "resuming" in capsys.readouterr().out
    other = ["predict", "--model", str(other_model_file), *base[3:]]
    err = _one_line_error(capsys, main([*other, "--out", out]))
    assert "another model" in err and "--force" in err
    assert main([*other, "--out", out, "--force"]) == 0


def test_a_hierarchical_model_gives_the_same_numbers_in_a_store(tmp_path, stack_tif, capsys):
    """The store's regions pass a hierarchical network's features to its decoder as prediction does."""
    import torch

    from napari_divnoising.hierarchical_network import HierarchicalVAE
    from napari_divnoising.model import DivNoisingModel
    from napari_divnoising.model_io import save_model
    from napari_divnoising.noise_models import GaussianNoiseModel

    torch.manual_seed(0)
    model = DivNoisingModel(HierarchicalVAE(levels=2, start_filters=4, z_dim=4), GaussianNoiseModel(a=0.0, b=4.0),
                            20.0, 15.0)
    model_file = save_model(model, tmp_path / "hierarchical.pt")
    common = ["predict", "--model", str(model_file), "--samples", "4", "--seed", "3", "--input", str(stack_tif)]
    assert main([*common, "--out-dir", str(tmp_path / "tif"), "--orientations", "1", "--offsets", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "h.ome.zarr")]) == 0
    capsys.readouterr()
    res = read_results(tmp_path / "h.ome.zarr")
    mmse = tifffile.imread(tmp_path / "tif" / "stack_mmse.tif")
    assert mmse.std() > 0
    np.testing.assert_array_equal(res["mmse"][0][...], mmse)
    np.testing.assert_array_equal(res["variance"][...], tifffile.imread(tmp_path / "tif" / "stack_variance.tif"))
