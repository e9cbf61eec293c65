"""The GPU benchmark's parts on the CPU, tiny sizes: it is run only where a GPU is lent, so a broken
script must show here first."""

from __future__ import annotations

import json

import numpy as np


def test_step_times_sampling_speed_and_report_on_the_cpu(benchmark_script):
    import torch

    from napari_divnoising.model import DivNoisingModel
    from napari_divnoising.network import DivNoisingVAE
    from napari_divnoising.noise_models import GaussianNoiseModel

    run_gpu = benchmark_script("run_gpu")
    cpu = torch.device("cpu")
    frames = np.random.default_rng(0).poisson(40.0, (2, 48, 48)).astype(np.float32)
    step = run_gpu.train_step_times(frames, cpu, batch=2, patch=16, steps=12, network="divnoising", depth=2)
    assert step["step_median_s"] > 0 and step["peak_gpu_mib"] is None and step["network"] == "divnoising, depth 2"
    default = run_gpu.train_step_times(frames, cpu, batch=2, patch=16, steps=12)
    assert default["network"] == "hierarchical, depth 3"  # the CPU's default network
    assert run_gpu.loop_rate(frames, cpu, run_gpu.loop_config(cpu, 2, 16, 12), warm=10) > 0
    model = DivNoisingModel(DivNoisingVAE(depth=2, start_filters=8, z_dim=8), GaussianNoiseModel(a=4.0, b=0.0),
                            40.0, 10.0)
    sampling = [run_gpu.sampling_speed(model, cpu, 32, 3, repeats=1, compute_map=with_map)
                for with_map in (False, False, True)]
    sampling.append(run_gpu.sampling_speed(model, cpu, 64, 2, repeats=1))
    assert all(s["samples_per_s"] > 0 for s in sampling)

    fmd = {"minutes": 0.1, "wall_s": 9.0, "steps": 5, "reason": "max_minutes", "budget_used": 1.0,
           "train_elapsed_s": 6.0, "best_step": 5, "batch": 8, "patch": 64, "summary": "Done: 5 steps",
           "predict_s_per_frame": 1.0, "train_options": ["--start-filters", "64"],
           **{f"{k}_psnr_{s}": 30.0 for k in ("noisy", "mmse", "map") for s in ("mean", "std")}}
    results = {"machine": {"device": "cpu"}, "log": ["$ divnoising train ..."], "start_filters": 16,
               "matmul_gflops": {"float32": 10.0, "bfloat16": 1.0},
               "train_steps": [dict(step, gflop_per_step=1.0, floor_s=0.1, ratio_to_floor=2.0, loop_steps_per_s=5.0)],
               "sampling": sampling, "fmd": fmd}
    json.dumps(results)
    text = run_gpu.markdown(results)
    assert "| divnoising, depth 2 | 2 x 16² |" in text and "16 first-level filters" in text
    assert ("- divnoising, depth 2, 2 samples of 64²: rate per pixel relative to 32²: " in text
            and text.count("against 3 samples") == 2)
    assert "ended by max_minutes" in text and "--device cpu --start-filters 64`" in text


def test_a_failing_part_is_reported_and_the_others_still_run(benchmark_script):
    run_gpu = benchmark_script("run_gpu")
    saved = []
    long_log = "$ divnoising train\n" + "\n".join(f"line {i}" for i in range(60))
    results = {"machine": {"device": "cpu"}, "log": [long_log]}

    def broken():
        raise RuntimeError("no GPU memory left")

    run_gpu.section(results, "sampling", broken, saved.append)
    run_gpu.section(results, "matmul_gflops", lambda: {"float32": 1.0, "bfloat16": 2.0}, saved.append)
    assert "sampling" not in results and "no GPU memory left" in results["errors"]["sampling"]
    assert results["matmul_gflops"]["float32"] == 1.0 and len(saved) == 2
    text = run_gpu.markdown(results)
    assert "## sampling failed" in text and "1 GFLOP/s float32" in text
    assert "[... 29 lines ...]" in text  # a long log keeps its head and tail
    assert run_gpu.PROGRESS_LINE.match("step 12, loss 2.5, 14 steps/s") and not run_gpu.PROGRESS_LINE.match("Done:")


def test_the_floor_counts_what_each_network_computes_in_a_training_step(benchmark_script):
    from napari_divnoising.hierarchical_network import HierarchicalVAE
    from napari_divnoising.network import DivNoisingVAE

    bench = benchmark_script("bench_train_step")
    paper = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    assert bench.training_forward_macs(paper, 32, 32) == bench.conv_macs(paper, 32, 32)
    ladder = HierarchicalVAE(levels=3, start_filters=8, z_dim=4)
    macs = bench.training_forward_macs(ladder, 32, 32)
    # The first convolution alone (1 to 8 channels, 3x3, every pixel), and more for a larger image.
    assert macs > 8 * 9 * 32 * 32 and bench.training_forward_macs(ladder, 64, 64) == 4 * macs
