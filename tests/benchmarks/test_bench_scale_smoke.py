"""Smoke test of benchmarks/bench_scale.py on tiny values (the plumbing, not the numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_scale_runs_tiny_and_reports_every_configuration(tmp_path, monkeypatch):
    import os

    import napari_divnoising

    # The benchmark's children import the package under test, wherever it lives.
    src = str(Path(napari_divnoising.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("_smoke_bench_scale", BENCH_DIR / "bench_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

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
