"""Smoke tests of the benchmark harness plumbing on tiny synthetic data (not of the real numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def common(benchmark_script):
    return benchmark_script("_common")


def _poisson_gaussian(signal: np.ndarray, gain: float, read_sigma: float, rng: np.random.Generator) -> np.ndarray:
    return gain * rng.poisson(signal / gain) + rng.normal(0.0, read_sigma, signal.shape)


def _smooth_signal(shape: tuple[int, int], rng: np.random.Generator, low: float = 10.0, high: float = 150.0):
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(rng.random(shape), 4.0)
    base = (base - base.min()) / (base.max() - base.min())
    return low + (high - low) * base


def test_markdown_table_formats_and_escapes(common):
    table = common.markdown_table(["a", "b"], [[1.23456, None], ["x|y", 12345.6]])
    lines = table.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[2] == "| 1.23 | – |"
    assert lines[3] == "| x\\|y | 12346 |"


def test_matmul_rate_and_conv_flops(common):
    from napari_divnoising.network import DivNoisingVAE

    assert common.matmul_gflops(128, repeats=2) > 0.1
    net = DivNoisingVAE(depth=2)
    small = common.conv_flops(net, (1, 1, 32, 32), "encode")
    large = common.conv_flops(net, (1, 1, 64, 64), "encode")
    # Convolution cost is proportional to the pixel count.
    assert large == pytest.approx(4 * small, rel=1e-6)
    # First layer alone (1 -> 32 channels, 3x3 at 64x64) is a lower bound.
    assert large > 2 * 64 * 64 * 32 * 9


def test_write_results_roundtrip(common, tmp_path):
    payload = {"x": np.float32(1.5), "arr": np.arange(3), "path": tmp_path}
    json_path, md_path = common.write_results("demo", payload, "# hi", tmp_path)
    assert json.loads(json_path.read_text()) == {"x": 1.5, "arr": [0, 1, 2], "path": str(tmp_path)}
    assert md_path.read_text() == "# hi\n"


def test_run_speed_handles_missing_and_failing_scripts(benchmark_script, tmp_path):
    run_speed = benchmark_script("run_speed")
    (tmp_path / "bench_ok.py").write_text("def run(quick=False):\n    return {'value': 1.0, 'quick': quick}\n")
    (tmp_path / "bench_broken.py").write_text("def run(quick=False):\n    raise RuntimeError('boom')\n")
    out = run_speed.run_bench_scripts(True, ("bench_ok", "bench_broken", "bench_absent"), tmp_path,
                                      log=lambda *a: None)
    assert out["bench_ok"]["value"] == 1.0 and out["bench_ok"]["quick"] is True
    assert "boom" in out["bench_broken"]["error"]
    assert "not found" in out["bench_absent"]["missing"]
    rows = run_speed._script_rows({"bench_predict": out["bench_absent"], "bench_noise_fit": out["bench_broken"]})
    assert [r[0] for r in rows] == ["posterior sampling", "noise-model fit"]
    assert all(r[-1].startswith("not measured") for r in rows)


@pytest.mark.parametrize("script", ["bench_train_step", "bench_predict", "bench_noise_fit"])
def test_speed_scripts_run_against_the_current_package(benchmark_script, script, monkeypatch, tmp_path):
    # Quick mode on synthetic data: catches a script left behind by a change of the package's API.
    monkeypatch.setenv("DIVNOISING_FMD_DIR", str(tmp_path))  # no real data: the synthetic path
    out = benchmark_script(script).run(True)
    figures = {"bench_train_step": out.get("step_median_s"),
               "bench_predict": (out.get("predict") or {}).get("ours_median_s"),
               "bench_noise_fit": out.get("ours_seconds_median")}
    assert figures[script] is not None and figures[script] > 0


def test_noise_fit_quality_scores_a_fit_from_noisy_images_alone(benchmark_script, tmp_path):
    import json

    assert benchmark_script("noise_fit_quality").main(
        ["--quick", "--noisy-alone", "--fit", "defaults:", "--out-dir", str(tmp_path), "--name", "fit"]) == 0
    fits = json.loads((tmp_path / "fit.json").read_text())["fits"]
    assert [f["label"] for f in fits] == ["defaults", "noisy images alone"]
    assert all(np.isfinite(f["nll"]) for f in fits)


def test_network_speed_script_measures_both_networks(benchmark_script, capsys):
    assert benchmark_script("bench_networks").main(["--quick", "--no-save", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| divnoising") or line.startswith("| hier")]
    assert len(rows) == 2 and all(float(row.split("|")[2]) > 0 for row in rows), printed


def test_speed_scaling_child_measures_time_and_memory(benchmark_script, common):
    run_speed = benchmark_script("run_speed")
    ballast = np.ones(64 * 2**20)  # 512 MiB resident in this process: must not show in the child's peak
    parent_peak = common.peak_rss_mib()
    rows = run_speed.run_scaling((64,), 2, "cpu", 1, rate_gflops=50.0, timeout_s=120, log=lambda *a: None)
    del ballast
    row = rows[0]
    assert "error" not in row, row
    assert row["finite"] and row["seconds"] > 0 and row["floor_s"] > 0
    # The kernel sums its per-CPU resident-memory counters lazily: a peak read later can come out a
    # fraction of a MiB below an earlier reading.
    assert row["rss_before_mib"] > 10 and row["peak_rss_mib"] > row["rss_before_mib"] - 1
    assert row["peak_rss_mib"] < parent_peak - 256
    markdown = run_speed.to_markdown({"machine": {"cpu": "x"}, "quick": True,
                                      "matmul_gflops": {"before": 50.0, "after_scripts": 40.0},
                                      "scripts": {}, "scaling": {"n_samples": 2, "device": "cpu", "rows": rows}})
    assert "| 64² |" in markdown


def test_bm3d_vst_noise_fit_and_inverse(benchmark_script):
    sys.path.insert(0, str(BENCH_DIR / "baselines"))
    bm3d_vst = benchmark_script("bm3d_vst", BENCH_DIR / "baselines")
    rng = np.random.default_rng(0)
    signal = _smooth_signal((48, 48), rng)
    stack = np.stack([_poisson_gaussian(signal, 4.0, 2.0, rng) for _ in range(40)])
    params = bm3d_vst.estimate_noise_params(stack)
    # variance = gain * mean + (read_sigma^2 - 0): gain 4, offset 4
    assert params.gain == pytest.approx(4.0, rel=0.1)
    assert params.offset == pytest.approx(4.0, abs=8.0)
    # The VST makes the noise unit-variance, and the inverse of the transformed mean is unbiased.
    level = 60.0
    noisy = _poisson_gaussian(np.full(200_000, level), 4.0, 2.0, rng)
    transformed = bm3d_vst.anscombe_forward(noisy, bm3d_vst.PoissonGaussianParams(4.0, 4.0))
    assert transformed.std() == pytest.approx(1.0, abs=0.05)
    back = bm3d_vst.anscombe_inverse(np.array([transformed.mean()]), bm3d_vst.PoissonGaussianParams(4.0, 4.0))
    assert back[0] == pytest.approx(level, rel=0.02)


def test_bm3d_vst_denoises_synthetic_image(benchmark_script):
    bm3d_vst = benchmark_script("bm3d_vst", BENCH_DIR / "baselines")
    rng = np.random.default_rng(1)
    signal = _smooth_signal((64, 64), rng)
    calibration = np.stack([_poisson_gaussian(signal, 4.0, 2.0, rng) for _ in range(30)])
    noisy = _poisson_gaussian(signal, 4.0, 2.0, rng)[None]
    result = bm3d_vst.evaluate(noisy, signal, calibration)
    assert result["psnr_mean"] > result["noisy_psnr_mean"] + 3.0
    assert result["psnr_matched_mean"] == pytest.approx(result["psnr_mean"], abs=0.5)  # the frame is as bright


def test_quality_markdown_from_results(benchmark_script, tmp_path):
    run_quality = benchmark_script("run_quality")
    results = {
        "machine": {"cpu": "test cpu", "cores": 2}, "data": "synthetic", "data_range": 255.0, "budget_minutes": 0.1,
        "max_steps": 3, "seed": 2, "n_samples": 4, "n_frames": 2, "quick": True,
        "methods": {
            "noisy": {"label": "Noisy input", "psnr_mean": 30.0, "psnr_std": 0.1},
            "n2v": {"label": "Noise2Void (CAREamics)", "skipped": "no CAREamics environment"},
            "colearn": {"label": "DivNoising, co-learned Gaussian (b)", "psnr_mean": 33.0, "psnr_std": 0.2,
                        "map": {"psnr_mean": 32.5, "psnr_std": 0.3, "psnr_matched_mean": 32.9},
                        "psnr_matched_mean": 33.4, "train_seconds": 6.0,
                        "predict_seconds_per_image": 0.5, "steps": 3, "stop_reason": "max_steps"},
        },
        "samples_sweep": {"label": "DivNoising, co-learned Gaussian (b)",
                          "counts": {"1": {"psnr_mean": 31.0, "psnr_std": 0.1, "seconds_per_image": 0.1},
                                     "10": {"psnr_mean": 32.0, "psnr_std": 0.1, "seconds_per_image": 1.0,
                                            "map": {"psnr_mean": 31.5, "psnr_std": 0.2, "seconds_per_image": 0.3}},
                                     "single_sample": {"psnr_mean": 29.5, "psnr_std": 0.4, "n": 20}}},
    }
    results["frame_intensity"] = [{"a": 0.94, "b": 0.3}, {"a": 0.95, "b": 0.25}]
    markdown = run_quality.to_markdown(results)
    assert "| Noisy input | 30.00 ± 0.10 |" in markdown
    assert "| 33.40 (MAP 32.90) |" in markdown and "a = 0.940, 0.950; b = 0.30, 0.25" in markdown
    assert "training seed 2;" in markdown
    assert "no CAREamics environment" in markdown
    assert "33.00 ± 0.20 | 32.50 ± 0.30 |" in markdown
    assert "| 1 | 31.00 ± 0.10 | – |" in markdown
    assert "| 10 | 32.00 ± 0.10 | 31.50 ± 0.20 |" in markdown
    assert "single posterior sample scores 29.50 ± 0.40 dB" in markdown


def test_quality_run_end_to_end_on_synthetic_folder(benchmark_script, tmp_path, monkeypatch):
    """The whole quality pipeline (fits, 4 trainings, predict, MAP, sweep) on a tiny synthetic data folder."""
    import dataclasses
    import functools

    import tifffile

    import napari_divnoising.noise_model_fitting as fitting
    import napari_divnoising.workflows as workflows
    from napari_divnoising import prediction

    # Plumbing, not fit quality: short noise-model fits (they were most of this test's time).
    fits = ((fitting, "fit_gmm_from_calibration"), (fitting, "bootstrap_gmm"), (fitting, "fit_gmm_from_noisy"),
            (workflows, "fit_gmm_iter"))
    for module, name in fits:
        monkeypatch.setattr(module, name, functools.partial(getattr(module, name), explore_pairs=4000,
                                                            explore_iterations=200, polish_iterations=20))

    run_quality = benchmark_script("run_quality")
    rng = np.random.default_rng(2)
    signals = [_smooth_signal((64, 64), rng) for _ in range(3)]

    # A 3-step model denoises nothing, so the bootstrap's first denoising (seeds 500 + training frame) is
    # replaced by the true signal: the bootstrap fit, its training and evaluation still run for real.
    real_predict_iter = prediction.predict_iter
    first_denoisings = []

    def predict_iter(model, image, n_samples=100, **kwargs):
        seed = kwargs.get("seed") or 0
        for event in real_predict_iter(model, image, n_samples, **kwargs):
            if 500 <= seed < 502 and isinstance(event, prediction.PredictionDone):  # the 2 training frames
                first_denoisings.append(seed)
                event = prediction.PredictionDone(
                    dataclasses.replace(event.result, mmse=signals[seed - 500].astype(np.float32)))
            yield event

    monkeypatch.setattr(prediction, "predict_iter", predict_iter)
    tifffile.imwrite(tmp_path / "train_noisy.tif",
                     np.stack([_poisson_gaussian(s, 4.0, 2.0, rng) for s in signals[:2]]).astype(np.float32))
    tifffile.imwrite(tmp_path / "calibration_fov01.tif",
                     np.stack([_poisson_gaussian(signals[0], 4.0, 2.0, rng) for _ in range(10)]).astype(np.float32))
    tifffile.imwrite(tmp_path / "val_noisy.tif",
                     np.stack([_poisson_gaussian(signals[2], 4.0, 2.0, rng) for _ in range(2)]).astype(np.float32))
    tifffile.imwrite(tmp_path / "val_gt.tif", signals[2].astype(np.float32))
    results = run_quality.run(quick=True, budget_minutes=0.05, data_dir=tmp_path, skip=("bm3d", "n2v"),
                              n_samples=3, sample_counts=[1, 3], max_steps=3, bootstrap_samples=2, verbose=False,
                              bootstrap_warm_start=True)
    methods = results["methods"]
    assert set(methods) == {"noisy", "calibration", "colearn", "bootstrap", "bootstrap_warm", "estimated"}
    assert first_denoisings == [500, 501, 500, 501]  # both bootstraps from the same first model
    assert [f["a"] for f in results["frame_intensity"]] == pytest.approx([1.0, 1.0], abs=0.1)
    assert methods["estimated"]["noise_fit_seconds"] > 0
    for key in ("calibration", "colearn", "bootstrap", "bootstrap_warm", "estimated"):
        m = methods[key]
        assert "error" not in m, m["error"]  # a refused bootstrap fit is a failure, not a result
        assert len(m["psnr"]) == 2 and np.isfinite(m["psnr_mean"]) and np.isfinite(m["map"]["psnr_mean"])
        assert len(m["psnr_matched"]) == 2 and np.isfinite(m["map"]["psnr_matched_mean"])
        assert 0 < m["steps"] <= 3
    counts = results["samples_sweep"]["counts"]
    assert set(counts) == {"1", "3", "single_sample"}
    assert "map" not in counts["1"] and np.isfinite(counts["3"]["map"]["psnr_mean"])
    assert counts["single_sample"]["n"] == 2 * 3
    json.dumps(run_quality.to_markdown(results))  # renders
    with pytest.raises(ValueError, match="unknown part"):
        run_quality.run(quick=True, data_dir=tmp_path, skip=("nope",), verbose=False)


def test_quality_ablation_trains_saves_and_scores_with_views(benchmark_script, tmp_path, monkeypatch):
    import functools

    import tifffile

    import napari_divnoising.noise_model_fitting as fitting

    monkeypatch.setattr(fitting, "fit_gmm_from_calibration", functools.partial(
        fitting.fit_gmm_from_calibration, explore_pairs=4000, explore_iterations=200, polish_iterations=20))
    ablation = benchmark_script("quality_ablation")
    rng = np.random.default_rng(4)
    signals = [_smooth_signal((64, 64), rng) for _ in range(3)]
    calibration = np.stack([_poisson_gaussian(signals[0], 4.0, 2.0, rng) for _ in range(10)]).astype(np.float32)
    train = np.stack([calibration[0], _poisson_gaussian(signals[1], 4.0, 2.0, rng)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "train_noisy.tif", train)
    tifffile.imwrite(tmp_path / "calibration_fov01.tif", calibration)
    tifffile.imwrite(tmp_path / "val_noisy.tif",
                     np.stack([_poisson_gaussian(signals[2], 4.0, 2.0, rng) for _ in range(2)]).astype(np.float32))
    tifffile.imwrite(tmp_path / "val_gt.tif", signals[2].astype(np.float32))
    runs, models = tmp_path / "runs.jsonl", tmp_path / "models"
    common = ["--data", str(tmp_path), "--threads", "1", "--n-samples", "2", "--out", str(runs)]
    assert ablation.main([*common, "--label", "tiny", "--seeds", "0", "--steps", "3", "--save-models", str(models),
                          "--set", "start_filters=8", "--set", "z_dim=8", "--set", "patch_size=32",
                          "--set", "batch_size=2", "--orientations", "1", "8"]) == 0
    assert ablation.main([*common, "--score-models", str(models / "tiny-seed0.pt"), "--orientations", "2",
                          "--offsets", "1", "2"]) == 0
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [(r["label"], r["orientations"], r["offsets"]) for r in records] == [
        ("tiny", 1, 1), ("tiny, 8 orientations", 8, 1), ("tiny, 2 orientations", 2, 1),
        ("tiny, 2 orientations, 2 grid offsets", 2, 2)]
    assert all(np.isfinite(r[name]["mmse"]) and np.isfinite(r[name]["mmse_matched"])
               for r in records for name in ("val", "holdout"))
    assert records[2]["steps"] == 3 and records[2]["settings"]["start_filters"] == 8
    table = ablation.summarise(runs)
    assert "| tiny, 2 orientations | calibration | 3 steps | 1 |" in table


def test_quality_ablation_calibration_line_recovers_a_clipped_camera_line(benchmark_script):
    ablation = benchmark_script("quality_ablation")
    rng = np.random.default_rng(1)
    signal = rng.uniform(2.5, 40.0, (48, 48))
    stack = np.clip(np.round(rng.normal(signal, np.sqrt(3.0 * signal - 5.0), (30, 48, 48))), 3, 255).astype(np.uint8)
    model = ablation.noise_line_from_calibration(stack, iterations=400)
    assert (model.quantum, model.floor, model.ceiling) == (1.0, 3.0, None)
    assert model.a == pytest.approx(3.0, rel=0.1) and model.b == pytest.approx(-5.0, abs=1.5)
    assert not any(p.requires_grad for p in model.parameters())
