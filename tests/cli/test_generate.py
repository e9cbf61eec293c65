"""`divnoising generate`: prior samples as a TIFF stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising.cli import main
from napari_divnoising.cli.generate import parse_size
from napari_divnoising.errors import DivNoisingError
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
    return save_model(DivNoisingModel(net, GaussianNoiseModel(), 50.0, 10.0, name="tiny"), tmp_path / "m.pt")


def test_generate_writes_a_stack(tmp_path, model_file, capsys):
    out = tmp_path / "prior.tif"
    assert main(["generate", "--model", str(model_file), "--count", "3", "--size", "40x52", "--out", str(out),
                 "--seed", "4"]) == 0
    images = tifffile.imread(out)
    assert images.shape == (3, 40, 52) and images.dtype == np.float32
    assert images.std(0).mean() > 0.5  # distinct images
    meta = read_tiff_metadata(out)
    assert meta["axes"] == "TYX" and meta["properties"]["divnoising_kind"] == "prior"
    assert meta["properties"]["divnoising_model"] == "tiny"
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", "--model", str(model_file), "--count", "3", "--size", "40x52", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_file), "--count", "3", "--size", "40x52", "--out", str(out),
                 "--seed", "4", "--force"]) == 0
    np.testing.assert_array_equal(tifffile.imread(out), images)


@pytest.mark.parametrize(
    "extra, words",
    [(["--count", "0"], "--count"), (["--size", "abc"], "--size"), (["--size", "0x5"], "--size"),
     (["--tile-size", "4"], "receptive field")],
)
def test_generate_errors(tmp_path, model_file, capsys, extra, words):
    code = main(["generate", "--model", str(model_file), "--out", str(tmp_path / "p.tif"), "--count", "1",
                 "--size", "32", *extra])
    err = capsys.readouterr().err
    assert code == 1 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.tif").exists()


def test_parse_size():
    assert parse_size("64") == (64, 64) and parse_size("32x48") == (32, 48)
    with pytest.raises(DivNoisingError):
        parse_size("1x2x3")
