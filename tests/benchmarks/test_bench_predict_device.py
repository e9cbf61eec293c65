"""Smoke test of the device-throughput benchmark (bench_predict.run_device) on the CPU, tiny sizes."""

from __future__ import annotations

import json


def test_device_benchmark_reports_rates_plans_and_targets(benchmark_script):
    module = benchmark_script("bench_predict")
    out = module.run_device("cpu", repeats=1, sizes=(32, 64), counts=(4, 3, 1))
    json.dumps(out)  # printable as JSON
    for key in ("predict_32", "predict_64", "predict_64_keep0", "predict_64_1_samples_keep0"):
        assert out[key]["median_s"] > 0 and out[key]["samples_per_s"] > 0
    assert out["predict_32"]["plan"] == {"tiles": 1, "tile": None, "batch": 4, "tiles_per_call": 1}
    assert out["large_over_small_rate"] > 0 and out["decoder_only"]["samples_per_s"] > 0
    assert "targets" not in out  # only judged at the real sizes
