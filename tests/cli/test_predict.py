"""`divnoising predict`: output files, metadata, overwrite protection, dtype/clip, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising.cli import main
from napari_divnoising.export import read_tiff_metadata
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.model_io import save_model
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    with torch.no_grad():
        net.decoder[0].weight.mul_(6.0)
        net.decoder[-1].weight.mul_(40.0)
    model = DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), 20.0, 15.0, name="tiny-test")
    return save_model(model, tmp_path / "model.pt")


@pytest.fixture()
def image_tif(tmp_path):
    rng = np.random.default_rng(0)
    data = np.clip(rng.normal(20, 15, (36, 44)), 0, 255).astype(np.uint8)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"unit": "um"})
    return path


def run(*args: str) -> int:
    return main(["predict", *args])


def test_writes_all_outputs_with_metadata(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "out"
    code = run("--model", str(model_file), "--input", str(image_tif), "--out-dir", str(out),
               "--samples", "6", "--save-samples", "3", "--map", "--seed", "1")
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cells_map.tif", "cells_mmse.tif", "cells_samples.tif", "cells_variance.tif"]
    mmse = tifffile.imread(out / "cells_mmse.tif")
    samples = tifffile.imread(out / "cells_samples.tif")
    variance = tifffile.imread(out / "cells_variance.tif")
    assert mmse.shape == (36, 44) and mmse.dtype == np.float32 and samples.shape == (3, 36, 44)
    assert variance.min() >= 0 and samples.std(0).mean() > 0.5
    meta = read_tiff_metadata(out / "cells_mmse.tif")
    assert meta["pixel_size"] == pytest.approx((0.3, 0.3)) and meta["unit"] == "um"
    assert meta["properties"]["divnoising_n_samples"] == "6"
    assert meta["properties"]["divnoising_model"] == "tiny-test"
    assert meta["properties"]["divnoising_orientations"] == "6"  # 6 samples: one in each of 6 orientations
    assert read_tiff_metadata(out / "cells_samples.tif")["axes"] == "TYX"
    assert "wrote" in capsys.readouterr().out


def test_same_seed_reproducible_and_no_overwrite_without_force(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "out"
    base = ["--model", str(model_file), "--input", str(image_tif), "--out-dir", str(out), "--samples", "4",
            "--save-samples", "0", "--seed", "3"]
    assert run(*base) == 0
    first = tifffile.imread(out / "cells_mmse.tif")
    assert not (out / "cells_samples.tif").exists()
    capsys.readouterr()
    assert run(*base) == 1
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert run(*base, "--force") == 0
    np.testing.assert_array_equal(tifffile.imread(out / "cells_mmse.tif"), first)


def test_all_outputs_checked_before_computing(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "out"
    out.mkdir()
    second = tmp_path / "other.tif"
    tifffile.imwrite(second, np.random.default_rng(1).integers(0, 255, (20, 20), dtype=np.uint8))
    (out / "other_variance.tif").write_bytes(b"keep me")
    code = run("--model", str(model_file), "--input", str(image_tif), "--input", str(second), "--out-dir",
               str(out), "--samples", "2")
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["other_variance.tif"]  # nothing computed or written


def test_stack_dtype_input_and_clip(tmp_path, model_file, capsys):
    rng = np.random.default_rng(2)
    stack = np.clip(rng.normal(5, 8, (3, 24, 28)), 0, 255).astype(np.uint8)
    path = tmp_path / "dark.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    assert run("--model", str(model_file), "--input", str(path), "--out-dir", str(out), "--samples", "3",
               "--save-samples", "2", "--dtype", "input", "--clip") == 0
    mmse = tifffile.imread(out / "dark_mmse.tif")
    assert mmse.shape == (3, 24, 28) and mmse.dtype == np.uint8
    samples_meta = read_tiff_metadata(out / "dark_samples.tif")
    assert samples_meta["axes"] == "TZYX" and samples_meta["shape"] == (2, 3, 24, 28)
    assert tifffile.imread(out / "dark_variance.tif").dtype == np.float32
    assert run("--model", str(model_file), "--input", str(path), "--out-dir", str(tmp_path / "f"),
               "--samples", "3", "--clip") == 0
    assert tifffile.imread(tmp_path / "f" / "dark_mmse.tif").min() >= 0


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--samples", "0"], "--samples"),
        (["--tile-size", "8"], "receptive field"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_settings(tmp_path, model_file, image_tif, capsys, extra, words):
    code = run("--model", str(model_file), "--input", str(image_tif), "--out-dir", str(tmp_path / "o"), *extra)
    err = capsys.readouterr().err
    assert code == 1 and words in err and len(err.strip().splitlines()) == 1


def test_bad_files(tmp_path, model_file, image_tif, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a model")
    assert run("--model", str(junk), "--input", str(image_tif), "--out-dir", str(tmp_path / "o")) == 1
    assert "not a readable" in capsys.readouterr().err
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((16, 16), np.nan, np.float32))
    assert run("--model", str(model_file), "--input", str(nan), "--out-dir", str(tmp_path / "o")) == 1
    assert "NaN" in capsys.readouterr().err
    four_d = tmp_path / "4d.tif"
    tifffile.imwrite(four_d, np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32))
    assert run("--model", str(model_file), "--input", str(four_d), "--out-dir", str(tmp_path / "o")) == 1
    assert "dimensions" in capsys.readouterr().err
    assert run("--model", str(model_file), "--input", str(tmp_path / "missing.tif"), "--out-dir",
               str(tmp_path / "o")) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(("orientations", "offsets"), [("1", "1"), (None, None), ("2", "2")])
def test_orientations_and_offsets_options(tmp_path, model_file, image_tif, capsys, orientations, offsets):
    from napari_divnoising.model_io import load_model
    from napari_divnoising.prediction import predict

    image = tifffile.imread(image_tif).astype(np.float32)
    model = load_model(model_file)
    out = tmp_path / "out"
    extra = ("--orientations", orientations, "--offsets", offsets) if orientations else ()  # None: defaults 8, 2
    assert run("--model", str(model_file), "--input", str(image_tif), "--out-dir", str(out), "--samples", "16",
               "--seed", "4", *extra) == 0
    expected = predict(model, image, 16, seed=4, orientations=int(orientations or 8), offsets=int(offsets or 2)).mmse
    np.testing.assert_allclose(tifffile.imread(out / "cells_mmse.tif"), expected, rtol=1e-5, atol=1e-4)
    props = read_tiff_metadata(out / "cells_mmse.tif")["properties"]
    assert (props["divnoising_orientations"], props["divnoising_offsets"]) == (orientations or "8", offsets or "2")


@pytest.mark.parametrize("option", ["--orientations", "--offsets"])
def test_bad_orientations_or_offsets_are_refused(tmp_path, model_file, image_tif, capsys, option):
    with pytest.raises(SystemExit):
        run("--model", str(model_file), "--input", str(image_tif), "--out-dir", str(tmp_path / "x"), option, "3")
    assert "invalid choice" in capsys.readouterr().err
    assert run("--model", str(model_file), "--input", str(image_tif), "--out", str(tmp_path / "r.ome.zarr"),
               option, "2") == 1
    assert f"{option} is not available with --out" in capsys.readouterr().err
