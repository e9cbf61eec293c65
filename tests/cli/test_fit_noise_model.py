"""The ``divnoising fit-noise-model`` command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising.cli import main
from napari_divnoising.noise_model_io import load_gmm_npz, read_description


def _clean(size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return 100 + 400 * (0.5 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0))


def _frames(clean: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n,) + clean.shape
    return (2 * rng.poisson((clean - 100) / 2, shape) + 100 + rng.normal(0, 3, shape)).astype(np.float32)


@pytest.fixture(scope="module")
def calibration_tif(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.tif"
    tifffile.imwrite(path, _frames(_clean(), 12))
    return path


def _fast(*args):
    return list(args) + ["--seed", "1"]


def test_calibration_fit_writes_model_plot_and_summary(tmp_path, calibration_tif, capsys):
    out, png = tmp_path / "nm.npz", tmp_path / "nm.png"
    code = main(_fast("fit-noise-model", "--calibration", str(calibration_tif), "--out", str(out), "--plot", str(png)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model = load_gmm_npz(out)
    with torch.no_grad():
        var = model.variance(torch.tensor([200.0, 400.0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(var, [209.0, 609.0], rtol=0.15)
    assert "calib.tif" in read_description(out)
    assert png.read_bytes()[:4] == b"\x89PNG"
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1
    slope = float(re.search(r"variance ~ ([0-9.]+) \* signal", summary[0]).group(1))
    assert slope == pytest.approx(2.0, rel=0.15)
    assert "held-out NLL" in summary[0]


def test_pairs_fit_with_options(tmp_path, capsys):
    clean = _clean(48)
    tifffile.imwrite(tmp_path / "noisy.tif", _frames(clean, 3, seed=2))
    tifffile.imwrite(tmp_path / "clean.tif", np.broadcast_to(clean, (3,) + clean.shape).astype(np.float32))
    out = tmp_path / "pairs.npz"
    code = main(_fast(
        "fit-noise-model", "--noisy", str(tmp_path / "noisy.tif"), "--clean", str(tmp_path / "clean.tif"),
        "--out", str(out), "--n-gaussians", "2", "--n-coeffs", "3", "--min-variance", "4",
        "--clip-percentiles", "1", "99",
    ))
    assert code == 0, capsys.readouterr().err
    model = load_gmm_npz(out)
    assert model.weight.shape == (6, 3)
    assert float(model.min_variance) == 4.0
    assert float(model.min_signal) == pytest.approx(np.percentile(clean, 1), rel=1e-3)


def test_noisy_images_alone_give_a_noise_model(tmp_path, capsys):
    frames = np.round(_frames(_clean(64), 4, seed=3)).astype(np.uint16)  # whole numbers, as a camera gives
    tifffile.imwrite(tmp_path / "noisy.tif", frames)
    out = tmp_path / "estimated.npz"
    code = main(_fast("fit-noise-model", "--noisy", str(tmp_path / "noisy.tif"), "--out", str(out)))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with torch.no_grad():
        var = load_gmm_npz(out).variance(torch.tensor([200.0, 400.0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(var, [209.0, 609.0], rtol=0.15)  # the frames' noise: 2 * (s - 100) + 9
    assert "noisy.tif" in read_description(out) and "Poisson-Gaussian" in read_description(out)
    assert len(captured.out.strip().splitlines()) == 1


def test_refuses_to_overwrite_without_force(tmp_path, calibration_tif, capsys):
    out = tmp_path / "nm.npz"
    out.write_bytes(b"keep me")
    args = _fast("fit-noise-model", "--calibration", str(calibration_tif), "--out", str(out))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert out.read_bytes() == b"keep me"
    assert main(args + ["--force"]) == 0
    load_gmm_npz(out)


def test_refuses_to_overwrite_plot_without_force(tmp_path, calibration_tif, capsys):
    png = tmp_path / "nm.png"
    png.write_bytes(b"old")
    code = main(_fast("fit-noise-model", "--calibration", str(calibration_tif), "--out", str(tmp_path / "a.npz"),
                      "--plot", str(png)))
    assert code == 1
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, c: ["--out", str(d / "o.npz")], "give --calibration"),
        (lambda d, c: ["--calibration", str(c), "--noisy", str(c), "--out", str(d / "o.npz")], "not both"),
        (lambda d, c: ["--clean", str(c), "--out", str(d / "o.npz")], "--clean needs --noisy"),
        (lambda d, c: ["--calibration", str(c), "--out", str(d / "o.txt")], ".npz"),
        (lambda d, c: ["--calibration", str(c), "--out", str(d / "o.npz"), "--plot", str(d / "p.pdf")], ".png"),
        (lambda d, c: ["--calibration", str(d / "missing.tif"), "--out", str(d / "o.npz")], "not found"),
        (lambda d, c: ["--calibration", str(c), "--out", str(d / "o.npz"), "--clip-percentiles", "50", "10"],
         "percentiles"),
        (lambda d, c: ["--calibration", str(c), "--out", str(d / "o.npz"), "--n-gaussians", "0"], "n_gaussians"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, calibration_tif, capsys, make_args, message):
    code = main(["fit-noise-model"] + make_args(tmp_path, calibration_tif))
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.npz").exists()


def test_one_frame_calibration_is_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "one.tif", _frames(_clean(), 1)[0])
    code = main(["fit-noise-model", "--calibration", str(tmp_path / "one.tif"), "--out", str(tmp_path / "o.npz")])
    assert code == 1
    assert "at least 2" in capsys.readouterr().err


def test_mismatched_pairs_are_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "n.tif", _frames(_clean(), 2))
    tifffile.imwrite(tmp_path / "c.tif", _clean(32).astype(np.float32))
    code = main(["fit-noise-model", "--noisy", str(tmp_path / "n.tif"), "--clean", str(tmp_path / "c.tif"),
                 "--out", str(tmp_path / "o.npz")])
    assert code == 1
    assert "same shape" in capsys.readouterr().err


def test_installed_script_help():
    exe = shutil.which("divnoising") or str(__import__("pathlib").Path(sys.executable).with_name("divnoising"))
    result = subprocess.run([exe, "fit-noise-model", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--calibration", "--noisy", "--clean", "--out", "--n-gaussians", "--n-coeffs", "--min-variance",
                   "--clip-percentiles", "--plot", "--force", "--seed"):
        assert option in result.stdout
