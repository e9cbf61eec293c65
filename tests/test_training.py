import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model_io import last_checkpoint_path, load_model
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel
from napari_divnoising.training import (
    COLEARN,
    CheckpointSaved,
    TrainingConfig,
    TrainingDone,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
    kl_per_pixel,
    train,
    train_iter,
)

SIGMA = 15.0


def blobs(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs on a background (clean signal), float32 (n, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.full((n, size, size), 20.0, np.float32)
    for i in range(n):
        for _ in range(size // 5):
            cy, cx = rng.uniform(0, size, 2)
            r, a = rng.uniform(2, 6), rng.uniform(50, 150)
            out[i] += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return out


@pytest.fixture(scope="module")
def data():
    clean = blobs(6, 64)
    noisy = clean + np.random.default_rng(1).normal(0, SIGMA, clean.shape).astype(np.float32)
    return clean, noisy


def small_config(**kw) -> TrainingConfig:
    """A tiny DivNoising network (4 filters, 4 latent channels) for tests of the loop's logic, not of denoising
    quality."""
    base = dict(network="divnoising", patch_size=32, batch_size=4, depth=2, start_filters=4, z_dim=4, max_steps=40,
                max_minutes=None, learning_rate=3e-3, n_validation_patches=8, validation_interval=10,
                kl_annealing_steps=10)
    base.update(kw)
    return TrainingConfig(**base)


def denoiser_config(**kw) -> TrainingConfig:
    """The smallest setting that denoises the blobs reliably: 300 steps of this network gave +6.3 to +8.6 dB
    on the held-out frame for seeds 0-2 (the default 32-filter network in 150 steps: +5.7 to +6.3 dB on
    training frames, at about twice the cost)."""
    base = dict(batch_size=16, start_filters=16, z_dim=16, n_validation_patches=16, learning_rate=1e-3,
                kl_annealing_steps=100)
    base.update(kw)
    return small_config(**base)


def mmse(model, noisy: np.ndarray, n: int = 20) -> np.ndarray:
    x = torch.from_numpy(noisy)[:, None]
    torch.manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.network.encode(model.normalize(x))
        samples = [model.denormalize(model.network.decode(model.network.sample_latent(mu, logvar))) for _ in range(n)]
    return torch.stack(samples).mean(0)[:, 0].numpy()


def psnr(a, b, data_range=255.0):
    return 10 * np.log10(data_range**2 / np.mean((a - b) ** 2))


def constant_gmm(sigma: float) -> GMMNoiseModel:
    """A GMM whose three components all have variance sigma**2 (a Gaussian written as a GMM)."""
    w = torch.zeros(9, 2)
    w[3:6, 0] = math.log(sigma**2)
    w[3:6, 1] = -30.0  # exp(-30) ~ 0: no signal dependence
    return GMMNoiseModel(w, 0.0, 255.0, min_variance=0.1)


def test_kl_per_pixel_matches_formula():
    mu, logvar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    expected = sum(
        0.5 * (m**2 + math.exp(lv) - 1 - lv) for m, lv in zip(mu.flatten().tolist(), logvar.flatten().tolist())
    ) / (2 * 16 * 16)
    assert float(kl_per_pixel(mu, logvar, 2 * 16 * 16)) == pytest.approx(expected, rel=1e-5)


def test_gmm_training_denoises(data, tmp_path):
    clean, noisy = data
    config = denoiser_config(max_steps=300)
    events = list(train_iter(noisy[:5], constant_gmm(SIGMA), config, checkpoint_path=tmp_path / "m.pt"))
    assert isinstance(events[0], TrainingStarted) and isinstance(events[-1], TrainingDone)
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [e.step for e in steps] == list(range(1, 301))
    first, last = np.mean([e.reconstruction for e in steps[:10]]), np.mean([e.reconstruction for e in steps[-10:]])
    assert last < first - 0.5
    done = events[-1]
    assert done.reason == "max_steps" and done.steps == 300
    assert done.best_val_loss == min(e.val_loss for e in events if isinstance(e, Validation))
    # scored on the frame held out of training, with its known clean image
    assert psnr(mmse(done.model, noisy[5:]), clean[5:]) > psnr(noisy[5:], clean[5:]) + 5
    kinds = {e.kind for e in events if isinstance(e, CheckpointSaved)}
    assert kinds == {"best", "last"}
    assert (tmp_path / "m.pt").exists() and last_checkpoint_path(tmp_path / "m.pt").exists()
    json.dumps(dataclasses.asdict(small_config()))
    json.dumps(done.history)


def test_colearned_noise_model_moves_towards_the_true_variance(data):
    clean, noisy = data
    events = list(train_iter(noisy[:5], COLEARN, denoiser_config(max_steps=250, noise_warm_start=False)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert steps[0].noise_a is not None
    b0, b1 = steps[0].noise_b, steps[-1].noise_b
    assert abs(np.log(b1 / SIGMA**2)) < abs(np.log(b0 / SIGMA**2))
    model = events[-1].model
    # held-out frame: +7.8 to +8.6 dB for seeds 0-2
    assert psnr(mmse(model, noisy[5:]), clean[5:]) > psnr(noisy[5:], clean[5:]) + 5


def test_colearned_noise_model_of_clipped_whole_numbers_denoises_to_the_recorded_mean():
    """Dark whole-number images clipped at an offset, as cameras record them: the co-learned model knows the
    clipping (off by choice), and its MMSE (the package's prediction) estimates the mean of the recorded values,
    the reference an average of many frames gives (+7.7 dB over the noisy frame, seed 0)."""
    from napari_divnoising.prediction import predict

    rng = np.random.default_rng(2)
    signal = 2.0 + 0.4 * blobs(6, 64, seed=3)  # background at 10, blobs up to about 70

    def record(s: np.ndarray, n: int) -> np.ndarray:
        return np.clip(np.round(s + rng.normal(0.0, 1.0, (n, *s.shape)) * np.sqrt(1.5 * s + 1.0)), 8.0, 255.0)

    noisy = record(signal, 1)[0].astype(np.float32)
    reference = record(signal[5], 400).mean(0)  # the mean of 400 recorded frames of the held-out image
    for recorded in (True, False):
        config = denoiser_config(max_steps=300 if recorded else 20, noise_clipping=recorded)
        done = list(train_iter(noisy[:5], COLEARN, config))[-1]
        noise_model = done.model.noise_model
        if recorded:
            assert (noise_model.quantum, noise_model.floor, noise_model.ceiling) == (1.0, 8.0, None)
            result = predict(done.model, noisy[5], 20, orientations=1, offsets=1, seed=0)
            assert result.mmse.min() >= 8.0
            assert psnr(result.mmse, reference) > psnr(noisy[5], reference) + 3
        else:
            assert noise_model.mean_is_signal


def test_stopping_between_steps_leaves_a_valid_model(data):
    _, noisy = data
    gen = train_iter(noisy, SIGMA, small_config(max_steps=1000))
    started = next(gen)
    before = [p.detach().clone() for p in started.model.network.parameters()]
    for event in gen:
        if isinstance(event, TrainStep) and event.step == 5:
            break
    gen.close()
    model = started.model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.network.parameters()))
    out = mmse(model, noisy[:1], n=2)
    assert np.isfinite(out).all() and out.shape == noisy[:1].shape
    assert model.history["steps"] == 5


def test_killed_run_resumes_from_last_checkpoint(data, tmp_path):
    _, noisy = data
    out = tmp_path / "model.pt"
    gen = train_iter(noisy, COLEARN, small_config(max_steps=100), checkpoint_path=out)
    for event in gen:
        if isinstance(event, TrainStep) and event.step == 25:
            break
    gen.close()  # like Stop; the last checkpoint was written at step 20 and on close
    last = load_model(last_checkpoint_path(out))
    assert last.history["steps"] == 25 and last.training_state is not None
    n_before = len(last.history["train_loss"])
    events = list(train_iter(noisy, COLEARN, small_config(max_steps=10), resume=last, checkpoint_path=out))
    started, done = events[0], events[-1]
    assert started.start_step == 25
    assert [e.step for e in events if isinstance(e, TrainStep)] == list(range(26, 36))
    assert done.steps == 35 and len(done.history["train_loss"]) == n_before + 10
    assert [r["end_step"] for r in done.history["runs"]] == [25, 35]
    assert load_model(last_checkpoint_path(out)).history["steps"] == 35
    # the resumed optimizer continued (Adam's step counter) instead of restarting
    assert done.model.training_state["optimizer"]["state"][0]["step"] == 35
    # the first run's model object is not modified by continuing from a copy
    assert last.history["steps"] == 25


def test_resume_refuses_incompatible_settings(data):
    _, noisy = data
    model = train(noisy, SIGMA, small_config(max_steps=2))
    with pytest.raises(DivNoisingError, match="depth"):
        next(train_iter(noisy, SIGMA, small_config(depth=3), resume=model))
    with pytest.raises(DivNoisingError, match="noise model"):
        next(train_iter(noisy, constant_gmm(SIGMA), small_config(), resume=model))


def test_posterior_collapse_is_detected_and_stops(data):
    _, noisy = data
    config = small_config(beta=1e4, max_steps=300, kl_annealing_steps=1, collapse_patience_steps=20,
                          learning_rate=3e-3, early_stopping_patience=1000, collapse_restarts=0)
    events = list(train_iter(noisy, SIGMA, config))
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "collapse"]
    assert len(warnings) == 1 and "beta" in warnings[0].message
    assert events[-1].reason == "collapse" and events[-1].steps < 300


def test_posterior_collapse_restarts_with_slower_annealing_then_gives_up(data):
    _, noisy = data
    config = small_config(beta=1e4, max_steps=600, kl_annealing_steps=1, collapse_patience_steps=20,
                          learning_rate=3e-3, early_stopping_patience=1000, collapse_restarts=2)
    weights_at_restart = []
    events = []
    for event in train_iter(noisy, SIGMA, config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            model = event.model
        if isinstance(event, TrainStep) and weights_at_restart and len(weights_at_restart[-1]) == 1:
            weights_at_restart[-1].append(event.kl_weight)
        if isinstance(event, TrainingWarning) and event.kind == "collapse" and "Restarting" in event.message:
            weights_at_restart.append([model.network.decoder[-1].weight.detach().clone()])
    warnings = [e.message for e in events if isinstance(e, TrainingWarning) and e.kind == "collapse"]
    assert len(warnings) == 3
    assert "over 2 steps (restart 1 of 2)" in warnings[0] and "over 4 steps (restart 2 of 2)" in warnings[1]
    assert "after 2 restart(s)" in warnings[2]
    # after each restart the KL weight ramps up from 0 again
    assert [w[1] for w in weights_at_restart] == [0.0, 0.0]
    done = events[-1]
    assert done.reason == "collapse" and len(done.history["collapse_restarts"]) == 2
    # the best model of all starts is kept, not only the last start's
    assert done.best_val_loss == min(e.val_loss for e in events if isinstance(e, Validation))


def test_no_restart_when_too_little_budget_is_left_for_the_longer_ramp(data):
    _, noisy = data
    config = small_config(beta=1e4, max_steps=60, kl_annealing_steps=20, collapse_patience_steps=5,
                          learning_rate=3e-3, early_stopping_patience=1000, collapse_restarts=2)
    events = list(train_iter(noisy, SIGMA, config))
    warnings = [e.message for e in events if isinstance(e, TrainingWarning) and e.kind == "collapse"]
    assert warnings and all("Restarting" not in w for w in warnings)
    assert "too little of the budget is left to restart" in warnings[0]


def test_no_restart_when_continuing_a_trained_model(data):
    _, noisy = data
    base = train(noisy, SIGMA, small_config(max_steps=20))
    config = small_config(beta=1e4, max_steps=300, kl_annealing_steps=1, collapse_patience_steps=20,
                          early_stopping_patience=1000, collapse_restarts=2)
    events = list(train_iter(noisy, SIGMA, config, resume=base))
    warnings = [e.message for e in events if isinstance(e, TrainingWarning) and e.kind == "collapse"]
    assert len(warnings) == 1 and "Restarting" not in warnings[0]
    assert events[-1].reason == "collapse"


def test_early_stopping_when_validation_stalls(data):
    _, noisy = data
    config = small_config(learning_rate=1e-12, max_steps=200, validation_interval=2, kl_annealing_steps=1,
                          early_stopping_patience=3, early_stopping_min_delta=1e-3)
    done = list(train_iter(noisy, SIGMA, config))[-1]
    # the validation loss never improves, but early stopping waits for half of the budget
    assert done.reason == "early_stopping" and done.steps == 100 and done.budget_used == 0.5
    anytime = dataclasses.replace(config, min_fraction_before_stopping=0.0)
    assert list(train_iter(noisy, SIGMA, anytime))[-1].steps == 8


def test_time_budget(data):
    _, noisy = data
    now = [0.0]  # an injected clock: every step takes 0.4 s, however fast this machine is
    config = small_config(max_steps=None, max_minutes=0.05)
    for event in train_iter(noisy, SIGMA, config, clock=lambda: now[0]):
        if isinstance(event, TrainStep):
            now[0] += 0.4
    done = event
    assert done.reason == "max_minutes" and done.steps == 8  # 7 steps end at 2.8 s, the 8th at 3.2 s > 3 s
    assert done.history["elapsed_s"] == pytest.approx(3.2)


def test_gmm_range_warning(data):
    _, noisy = data
    w = constant_gmm(SIGMA).weight.detach()
    narrow = GMMNoiseModel(w, 0.0, 40.0)
    events = list(train_iter(noisy, narrow, small_config(max_steps=1)))
    assert any(isinstance(e, TrainingWarning) and e.kind == "noise_model_range" for e in events)
    events = list(train_iter(noisy, constant_gmm(SIGMA), small_config(max_steps=1)))
    assert not any(isinstance(e, TrainingWarning) for e in events)


def test_noise_model_given_is_not_modified(data):
    _, noisy = data
    nm = GaussianNoiseModel(a=0.0, b=100.0, offset=50.0, scale=30.0)
    train(noisy, nm, small_config(max_steps=5))
    assert nm.b == pytest.approx(100.0)


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(device="tpu"), "device must be one of"),
        (dict(patch_size=30), "multiple of 4"),
        (dict(max_steps=None, max_minutes=None), "budget"),
        (dict(beta=-1.0), "beta"),
    ],
)
def test_bad_settings(data, kw, words):
    _, noisy = data
    with pytest.raises(DivNoisingError, match=words):
        next(train_iter(noisy, SIGMA, small_config(**kw)))


def test_bad_images_and_noise_specs():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    with pytest.raises(DivNoisingError, match="RGB"):
        next(train_iter(rgb, SIGMA, small_config()))
    with pytest.raises(DivNoisingError, match="smaller than"):
        next(train_iter(np.random.default_rng(0).random((20, 20)), SIGMA, small_config()))
    with pytest.raises(DivNoisingError, match="noise_model must be a GMMNoiseModel"):
        next(train_iter(blobs(1, 64), "poisson", small_config()))


def test_learning_rate_decays_over_the_end_of_the_budget_and_resume_starts_undecayed(data):
    _, noisy = data
    config = small_config(max_steps=40, learning_rate=2e-3, lr_decay_fraction=0.5, lr_decay_floor=0.1)
    events = list(train_iter(noisy, SIGMA, config))
    lrs = [e.lr for e in events if isinstance(e, TrainStep)]
    assert len(lrs) == 40
    assert all(lr == pytest.approx(2e-3) for lr in lrs[:21])  # progress up to 50%: no decay
    assert all(a > b for a, b in zip(lrs[21:], lrs[22:]))  # then linear decay
    assert lrs[-1] == pytest.approx(2e-3 * (0.1 + 0.9 * (1 / 40) / 0.5))
    model = events[-1].model
    assert model.training_state["plateau_lr"] == pytest.approx(2e-3)
    resumed = [e.lr for e in train_iter(noisy, SIGMA, small_config(max_steps=4, learning_rate=2e-3,
                                                                     lr_decay_fraction=0.0), resume=model)
               if isinstance(e, TrainStep)]
    assert resumed == pytest.approx([2e-3] * 4)


def test_no_decay_when_disabled(data):
    _, noisy = data
    lrs = [e.lr for e in train_iter(noisy, SIGMA, small_config(max_steps=20, lr_decay_fraction=0.0))
           if isinstance(e, TrainStep)]
    assert lrs == pytest.approx([3e-3] * 20)
    with pytest.raises(DivNoisingError, match="lr_decay"):
        next(train_iter(noisy, SIGMA, small_config(lr_decay_floor=0.0)))
