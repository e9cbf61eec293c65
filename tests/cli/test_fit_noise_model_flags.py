"""`fit-noise-model --min-variance` names the GMM's variance floor; `--min-sigma` still works as the old name."""

from __future__ import annotations

import argparse

import pytest

from napari_divnoising.cli.fit_noise_model import add_parser


@pytest.mark.parametrize("flag", ["--min-variance", "--min-sigma"])
def test_variance_floor_flag_and_its_deprecated_alias(flag):
    parser = argparse.ArgumentParser()
    command = add_parser(parser.add_subparsers())
    args = command.parse_args(["--calibration", "c.tif", "--out", "nm.npz", flag, "4"])
    assert args.min_variance == 4.0
    assert "deprecated" in command.format_help()
