"""The noise-fit report runs end to end and compares the fits per signal bin."""

from __future__ import annotations

import json


def test_quick_report_compares_the_defaults_with_lower_floors(benchmark_script, tmp_path):
    report = benchmark_script("noise_fit_quality")
    assert report.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "noise_fit.json").read_text())
    defaults, floor_1, lowest = results["fits"]
    assert (defaults["label"], floor_1["label"], lowest["label"]) == ("defaults", "floor 1", "floor 1/12")
    assert all(f["roughness"] > 0 for f in results["fits"])
    assert defaults["min_variance"] > floor_1["min_variance"] == 1.0 > lowest["min_variance"]
    assert results["integer_data"] and defaults["bins"] and len(defaults["bins"]) == len(lowest["bins"])
    darkest = defaults["bins"][0]
    assert darkest["signal"][0] == 0 and darkest["count"] > 0 and darkest["empirical_variance"] > 0
    table = (tmp_path / "noise_fit.md").read_text()
    assert "| signal | pixels | empirical variance | defaults: variance | floor 1: variance |" in table
    assert f"**{defaults['nll']:.4f}**" in table


def test_quick_report_fits_the_co_learned_line_plain_and_clipped(benchmark_script, tmp_path):
    report = benchmark_script("noise_fit_quality")
    assert report.main(["--quick", "--lines", "--fit", "defaults:", "--out-dir", str(tmp_path), "--name", "lines"]) == 0
    fits = json.loads((tmp_path / "lines.json").read_text())["fits"]
    assert [f["label"] for f in fits] == ["defaults", "Gaussian line", "Gaussian line, clipped"]
    plain, clipped = fits[1], fits[2]
    assert plain["a"] > 0 and plain["clipped_below"] is None and plain["nll"] > 0
    assert clipped["nll"] <= plain["nll"] + 1e-6  # the quick stack is not clipped: the same model
