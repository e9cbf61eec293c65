"""`divnoising train --bootstrap`: option checks (the workflow itself is tested in tests/test_workflows.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_divnoising.cli import main


@pytest.mark.parametrize("extra, words", [
    (["--co-learn"], "only one of"),
    (["--resume", "m.pt"], "--bootstrap trains new models"),
])
def test_bootstrap_conflicts_are_one_line_errors(tmp_path, capsys, extra, words):
    data = tmp_path / "noisy.tif"
    tifffile.imwrite(data, np.random.default_rng(0).normal(100, 10, (32, 32)).astype(np.float32))
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--bootstrap", *extra])
    err = capsys.readouterr().err
    assert code == 1 and words in err and len(err.strip().splitlines()) == 1


def test_sigma_min_is_accepted_with_bootstrap_and_refused_with_a_gmm(tmp_path, capsys):
    data = tmp_path / "noisy.tif"
    tifffile.imwrite(data, np.zeros((8, 8), np.float32))
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--noise-model", "nm.npz",
                 "--sigma-min", "1"])
    assert code == 1 and "--sigma-min only applies" in capsys.readouterr().err
