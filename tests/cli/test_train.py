import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising import training
from napari_divnoising.cli import main
from napari_divnoising.model_io import load_model
from napari_divnoising.noise_model_io import save_gmm_npz
from napari_divnoising.noise_models import GMMNoiseModel


@pytest.fixture()
def noisy_tif(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    clean = 40 + 100 * np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / 50.0)
    stack = np.stack([clean + rng.normal(0, 10, clean.shape) for _ in range(5)])
    path = tmp_path / "noisy.tif"
    tifffile.imwrite(path, np.clip(stack, 0, 255).astype(np.uint8))
    return path


FAST = ["--max-steps", "12", "--patch-size", "32", "--batch-size", "4"]


def test_colearn_writes_best_and_last_and_summary(tmp_path, noisy_tif, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(noisy_tif), "--co-learn", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "12 steps" in printed and "Learned noise model: variance =" in printed and str(out) in printed
    # the network the CPU's defaults chose for co-learning
    assert "divnoising network, depth 2, 16 filters, 64 latent channels," in printed
    model = load_model(out)
    assert model.noise_model.kind == "gaussian" and model.config["patch_size"] == 32
    assert load_model(tmp_path / "m.last.pt").history["steps"] == 12


def test_colearn_of_clipped_whole_numbers_says_where_they_are_clipped(tmp_path, capsys):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    clean = 4 + 60 * np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / 50.0)
    stack = np.clip(np.round(clean + rng.normal(0, 1, (5, 64, 64)) * np.sqrt(clean + 1)), 3, 255).astype(np.uint8)
    data = tmp_path / "dark.tif"
    tifffile.imwrite(data, stack)
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(data), "--co-learn", "--out", str(out), *FAST]) == 0
    assert "values clipped below 3)" in capsys.readouterr().out
    assert load_model(out).noise_model.floor == 3.0
    plain = tmp_path / "plain.pt"
    assert main(["train", "--data", str(data), "--co-learn", "--no-noise-clipping", "--out", str(plain), *FAST]) == 0
    assert "values clipped" not in capsys.readouterr().out and load_model(plain).noise_model.mean_is_signal
    assert main(["train", "--data", str(data), "--sigma", "2", "--no-noise-clipping", "--out",
                 str(tmp_path / "n.pt"), *FAST]) == 1
    assert "--[no-]noise-clipping only applies with --co-learn or --bootstrap." in capsys.readouterr().err


def test_gmm_file_and_resume_in_place(tmp_path, noisy_tif, capsys):
    w = np.zeros((9, 2), np.float32)
    w[3:6, 0] = np.log(100.0)
    w[3:6, 1] = -30
    save_gmm_npz(GMMNoiseModel(w, 0.0, 255.0), tmp_path / "nm.npz")
    out = tmp_path / "m.pt"
    nm = str(tmp_path / "nm.npz")
    assert main(["train", "--data", str(noisy_tif), "--noise-model", nm, "--out", str(out), *FAST]) == 0
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(out), "--max-steps", "4"]) == 0
    model = load_model(tmp_path / "m.last.pt")
    assert model.history["steps"] == 16 and model.noise_model.kind == "gmm"
    assert model.config["batch_size"] == 4  # settings carried over from the resumed model


def test_a_noise_model_estimated_from_the_training_images(tmp_path, noisy_tif, capsys, monkeypatch):
    from napari_divnoising import noise_model_fitting
    from napari_divnoising.training import noise_setup

    def quick_fit(images, **kw):  # the same fit with fewer iterations (the fit has its own tests)
        return noise_model_fitting.fit_gmm_from_noisy(images, explore_iterations=300, polish_iterations=30, **kw)

    monkeypatch.setattr(noise_setup, "fit_gmm_from_noisy", quick_fit)
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(noisy_tif), "--estimate-noise", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "hierarchical network" in printed  # a given noise model: the CPU's network
    model = load_model(out)
    assert model.noise_model.kind == "gmm"
    with torch.no_grad():  # the images' noise: sigma 10
        assert float(model.noise_model.variance(torch.tensor([60.0], dtype=torch.float64))) == pytest.approx(
            100, rel=0.3)
    for extra, words in ((["--co-learn"], "only one of"), (["--resume", str(out)], "keeps its own noise model")):
        assert main(["train", "--data", str(noisy_tif), "--estimate-noise", *extra, "--out",
                     str(tmp_path / "n.pt"), *FAST]) == 1
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1


def test_refuses_to_overwrite_and_bad_combinations(tmp_path, noisy_tif, capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(b"x")
    assert main(["train", "--data", str(noisy_tif), "--sigma", "10", "--out", str(out), *FAST]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--data", str(noisy_tif), "--out", str(tmp_path / "n.pt"), *FAST]) == 1
    assert "choose a noise model" in capsys.readouterr().err
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--co-learn", "--out", str(tmp_path / "n.pt")]) == 1
    assert "give only one of" in capsys.readouterr().err
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--device", "tpu",
                 "--out", str(tmp_path / "n.pt"), *FAST]) == 1
    assert "--device must be one of auto, cpu, cuda, mps (got 'tpu')" in capsys.readouterr().err
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--device", "cuda:7",
                 "--out", str(tmp_path / "n.pt"), *FAST]) == 1
    assert "'cuda:7'" in capsys.readouterr().err
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(tmp_path / "n.pt")]) == 1
    assert "not a readable" in capsys.readouterr().err
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert main(["train", "--data", str(rgb), "--sigma", "3", "--out", str(tmp_path / "n.pt"), *FAST]) == 1
    assert "rgb.tif" in capsys.readouterr().err


def test_ctrl_c_keeps_a_resumable_model(tmp_path, noisy_tif, monkeypatch, capsys):
    real = training.train_iter

    def interrupted(*args, **kwargs):
        gen = real(*args, **kwargs)
        try:
            for event in gen:
                yield event
                if isinstance(event, training.TrainStep) and event.step == 7:
                    raise KeyboardInterrupt
        finally:
            gen.close()

    monkeypatch.setattr(training, "train_iter", interrupted)
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(noisy_tif), "--sigma", "10", "--out", str(out), *FAST]) == 130
    assert "Interrupted at step 7" in capsys.readouterr().out
    assert load_model(tmp_path / "m.last.pt").history["steps"] == 7
    assert load_model(out).network.settings()["network"] == "hierarchical"  # the CPU default, saved and loaded


def test_a_missing_gpu_is_one_line_before_any_progress(tmp_path, noisy_tif, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(noisy_tif), "--co-learn", "--device", "cuda", "--out", str(out), *FAST]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "divnoising train: error: Device 'cuda' was asked for, but this torch build sees no CUDA GPU; "
        "use --device cpu or auto."
    ]
    assert captured.out == "" and not out.exists()


def test_the_other_network_trains_and_continues_with_its_own_settings(tmp_path, noisy_tif, capsys):
    out = tmp_path / "h.pt"
    assert main(["train", "--data", str(noisy_tif), "--co-learn", "--network", "divnoising", "--out", str(out),
                 *FAST]) == 0
    printed = capsys.readouterr().out
    assert "divnoising network, depth 2, 16 filters, 64 latent channels," in printed
    assert load_model(out).network.settings() == {"network": "divnoising", "depth": 2, "start_filters": 16,
                                                  "z_dim": 64}
    # Continued without network options: it keeps its own; asked for another one: refused in one line.
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(out), "--max-steps", "14"]) == 0
    assert load_model(out).history["steps"] == 12 + 14
    capsys.readouterr()
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(out), "--network",
                 "hierarchical", "--max-steps", "16"]) == 1
    err = capsys.readouterr().err
    assert "has network divnoising, but network hierarchical was asked for" in err and "Traceback" not in err
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--network", "Unet", "--out",
                 str(tmp_path / "u.pt")]) == 1
    err = capsys.readouterr().err
    assert "network must be one of divnoising, hierarchical (got 'Unet')" in err and "Traceback" not in err


def test_the_filters_are_an_option_and_a_continued_model_keeps_its_own(tmp_path, noisy_tif, capsys):
    out = tmp_path / "f.pt"
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--start-filters", "8", "--out", str(out),
                 *FAST]) == 0
    assert "8 filters" in capsys.readouterr().out
    assert load_model(out).network.settings()["start_filters"] == 8
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(out), "--max-steps", "14"]) == 0
    assert load_model(out).network.settings()["start_filters"] == 8
    capsys.readouterr()
    assert main(["train", "--data", str(noisy_tif), "--resume", str(out), "--out", str(out), "--start-filters", "16",
                 "--max-steps", "16"]) == 1
    err = capsys.readouterr().err
    assert "16" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--start-filters", "2", "--out",
                 str(tmp_path / "g.pt")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("options", "message"), [
    (["--lr", "-1"], "--lr must be between"),
    (["--start-filters", "2"], "--start-filters must be between 4 and 256 (got 2)"),
    (["--patch-size", "30"], "--patch-size must be a multiple of 8"),
    (["--kl-annealing-steps", "-3"], "--kl-annealing-steps must be between"),
    (["--network", "hierarchical", "--depth", "1"], "--depth must be 2 or more for a hierarchical network"),
])
def test_a_setting_out_of_range_is_one_line_naming_its_flag(tmp_path, noisy_tif, capsys, options, message):
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(noisy_tif), "--sigma", "3", "--out", str(out), *options]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"divnoising train: error: {err.split('error: ', 1)[1]}" and len(err.splitlines()) == 1
    assert message in err and "_" not in err.split("error: ", 1)[1].split()[0]
    assert not out.exists()
