"""The optimizer benchmark's parts on the CPU, tiny sizes (its CUDA rows run only where a GPU is lent)."""

from __future__ import annotations

import json

import torch

from napari_divnoising.training import optimiser as optimiser_module


def test_every_cpu_variant_runs_and_the_report_names_them(benchmark_script):
    bench = benchmark_script("bench_optimizer")
    results = bench.run(torch.device("cpu"), batch=2, patch=16, filters=4, steps=10, repeats=1, profile_n=3)
    json.dumps(results)
    assert set(results["median_steps_per_s"]) == {"single", "foreach", "fused"}  # no graphs on a CPU
    assert all(rate > 0 for rate in results["median_steps_per_s"].values())
    assert results["profile"]["host_ops_per_step"] > 0 and results["profile"]["kernels_per_step"] == 0
    assert optimiser_module.ADAM_IMPLEMENTATION == "fused"  # the benchmark put the default back
    text = bench.markdown(results)
    assert "| foreach |" in text and "Profile of 3 steps" in text

