"""Smoke test of benchmarks/bench_scale.py on tiny values (the plumbing, not the numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_bench_scale_runs_tiny_and_reports_every_configuration(benchmark_script, tmp_path, monkeypatch):
    import os

    import napari_divnoising

    # The benchmark's children import the package under test, wherever it lives.
    src = str(Path(napari_divnoising.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bench = benchmark_script("bench_scale")

    bench.main(["--frames", "3", "--size", "64", "--samples", "2", "--arch", "tiny", "--workers", "1",
                "--sweep-gb", "0.0002", "--timeout", "600", "--tmp-dir", str(tmp_path), "--out-dir", str(tmp_path)])
    results = json.loads((tmp_path / "scale.json").read_text())
    runs = {r["mode"]: r for r in results["runs"]}
    assert set(runs) == {"cli-tiff", "zarr", "dask-1"}
    for run in runs.values():
        assert "error" not in run, run
        assert run["frames_per_s"] > 0 and run["main_peak_mib"] > 10
    assert len(runs["dask-1"]["worker_peak_mib"]) == 1
    assert runs["cli-tiff"]["time_per_frame_vs_cli"] == pytest.approx(1.0)
    assert results["sweep"][0]["frames"] >= 1 and results["sweep"][0]["main_peak_mib"] > 10
    assert "| dask-1 | 3 |" in (tmp_path / "scale.md").read_text()
