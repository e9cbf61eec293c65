"""The training loop's budget handling, checkpoint failures and GPU-path parts, run on the CPU."""

import numpy as np
import pytest
import torch

from napari_divnoising.data import augment
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model_io import load_model
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.training import (
    COLEARN,
    CheckpointSaved,
    TrainingConfig,
    TrainingDone,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
    device_defaults,
    train,
    train_iter,
)
from napari_divnoising.training.sampling import DevicePatchSampler

UNIT = 0.001  # seconds of fake time per normal step


class StepClock:
    """Fake time that the test advances after each step: the first steps are 100x slower (GPU warm-up)."""

    def __init__(self, slow_steps: int = 5, slowdown: float = 100.0):
        self.now = 0.0
        self.slow_steps = slow_steps
        self.slowdown = slowdown

    def __call__(self) -> float:
        return self.now

    def after(self, step: int) -> None:
        self.now += UNIT * (self.slowdown if step <= self.slow_steps else 1.0)


def tiny_config(**kw) -> TrainingConfig:
    base = dict(network="divnoising", patch_size=16, batch_size=2, depth=1, start_filters=4, z_dim=2,
                n_validation_patches=4, max_minutes=None, max_steps=None, learning_rate=1e-3)
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.normal(100, 10, (6, 32, 32)).astype(np.float32)


def run_with_clock(images, config, clock, **kw):
    events = []
    for event in train_iter(images, 10.0, config, clock=clock, **kw):
        events.append(event)
        if isinstance(event, TrainStep):
            clock.after(event.step)
    return events


def test_slow_warm_up_does_not_shorten_a_time_budgeted_run(images):
    clock = StepClock()
    budget_s = 900 * UNIT  # 5 warm-up steps at 100x (500 units) then about 400 normal steps
    # collapse_kl_threshold 0: this tiny network's posterior may collapse, which is not what is tested here
    events = run_with_clock(images, tiny_config(max_minutes=budget_s / 60, collapse_kl_threshold=0.0), clock)
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.reason == "max_minutes"
    assert done.budget_used == pytest.approx(1.0) and done.steps >= 395
    validations = [e.step for e in events if isinstance(e, Validation)]
    # spread over the whole budget (35 per run by default), not bunched by a plan made from the warm-up
    assert len(validations) >= 20 and validations[-1] >= 0.95 * done.steps
    assert validations[0] > 5  # none planned from the warm-up alone
    weights = [e.kl_weight for e in events if isinstance(e, TrainStep)]
    ramp_end = next(i for i, w in enumerate(weights) if w == 1.0)
    assert 0.05 * len(weights) < ramp_end < 0.15 * len(weights)  # KL annealing over 10% of the steps


def test_early_stopping_never_ends_a_run_in_its_first_half(images):
    clock = StepClock()
    # no validation after the first counts as an improvement: early stopping is due as soon as it is allowed
    config = tiny_config(max_minutes=900 * UNIT / 60, early_stopping_min_delta=1e9, early_stopping_patience=2)
    done = run_with_clock(images, config, clock)[-1]
    assert done.reason == "early_stopping"
    assert done.budget_used >= 0.5 and 0.5 * 400 <= done.steps < 0.7 * 400


def test_step_budget_reports_its_use_and_the_rate(images):
    events = list(train_iter(images, 10.0, tiny_config(max_steps=30)))
    done = events[-1]
    assert done.reason == "max_steps" and done.budget_used == pytest.approx(1.0) and done.steps == 30
    assert done.reason_text == "step budget reached"
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert steps[-1].steps_per_s > 0 and steps[-1].fraction == pytest.approx(1.0)
    assert done.history["runs"][-1]["budget_used"] == pytest.approx(1.0)


def test_device_defaults_fill_patch_batch_size_filters_and_network(images):
    assert device_defaults("cpu") == {"patch_size": 64, "batch_size": 8, "start_filters": 16,
                                      "network": "hierarchical"}
    started = next(iter(train_iter(np.zeros((2, 80, 80), np.float32) + np.arange(80), 10.0,
                                   TrainingConfig(max_steps=1, device="cpu"))))
    assert isinstance(started, TrainingStarted)
    assert started.config["patch_size"] == 64 and started.config["batch_size"] == 8
    assert started.config["start_filters"] == 16 and started.model.network.start_filters == 16
    assert started.config["log_interval"] == 1
    # and the network's own depth and latent channels
    assert (started.config["network"], started.config["depth"], started.config["z_dim"]) == ("hierarchical", 3, 16)
    assert started.model.network.settings() == {"network": "hierarchical", "depth": 3, "start_filters": 16,
                                                "z_dim": 16}


def test_a_continued_model_keeps_its_filters_when_they_are_left_to_the_device(images):
    wide = next(iter(train_iter(images, 10.0, tiny_config(max_steps=1, start_filters=32)))).model
    started = next(iter(train_iter(images, None, tiny_config(max_steps=1, start_filters=None), resume=wide)))
    assert started.model.network.start_filters == 32 and started.config["start_filters"] == 32
    with pytest.raises(DivNoisingError, match="start_filters 32"):
        next(iter(train_iter(images, None, tiny_config(max_steps=1, start_filters=16), resume=wide)))


def test_log_interval_reads_losses_back_in_blocks(images):
    events = list(train_iter(images, 10.0, tiny_config(max_steps=12, log_interval=5)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert [s.logged_step for s in steps[:6]] == [0, 0, 0, 0, 5, 5]
    done = events[-1]
    assert done.history["train_steps"] == list(range(1, 13))  # every step's loss is kept, read back in blocks


def test_a_checkpoint_that_cannot_be_written_does_not_end_training(images, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    config = tiny_config(max_steps=40, validation_interval=10)
    events = list(train_iter(images, 10.0, config, checkpoint_path=blocker / "model.pt"))
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "checkpoint"]
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.steps == 40 and done.reason == "max_steps"
    assert done.unsaved and not any(isinstance(e, CheckpointSaved) for e in events)
    assert 1 <= len(warnings) <= 2 and "Training goes on" in warnings[0].message
    assert str(blocker) in warnings[0].message


def test_checkpoints_resume_after_a_failure(images, tmp_path, monkeypatch):
    import napari_divnoising.model_io as model_io

    real_save = model_io.save_model
    calls = {"n": 0}

    def flaky_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(model_io, "save_model", flaky_save)
    out = tmp_path / "model.pt"
    events = list(train_iter(images, 10.0, tiny_config(max_steps=40, validation_interval=10), checkpoint_path=out))
    assert [e.kind for e in events if isinstance(e, TrainingWarning)].count("checkpoint") == 1
    assert not events[-1].unsaved and load_model(out).history["steps"] == 40


def test_resume_refuses_another_noise_model(images):
    model = train(images, 10.0, tiny_config(max_steps=3))
    other = GaussianNoiseModel(a=0.0, b=400.0, trainable=False)
    with pytest.raises(DivNoisingError, match="cannot change its noise model"):
        next(iter(train_iter(images, other, tiny_config(max_steps=3), resume=model)))
    with pytest.raises(DivNoisingError, match="co-learning"):
        next(iter(train_iter(images, "gaussian", tiny_config(max_steps=3), resume=model)))
    # its own noise model, or none, continues
    assert train(images, None, tiny_config(max_steps=2), resume=model).history["steps"] == 5


def test_config_ranges_come_from_the_metadata():
    with pytest.raises(DivNoisingError, match="depth must be between 1 and 6"):
        TrainingConfig(depth=7).validate()
    with pytest.raises(DivNoisingError, match="batch_size must be a whole number"):
        TrainingConfig(batch_size=2.5).validate()
    with pytest.raises(DivNoisingError, match="device must be one of"):
        TrainingConfig(device="tpu").validate()
    with pytest.raises(DivNoisingError, match="config must be a TrainingConfig"):
        next(iter(train_iter(np.zeros((2, 64, 64), np.float32), 1.0, {"max_steps": 1})))


def test_device_patch_sampler_cuts_augmented_crops():
    region = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    sampler = DevicePatchSampler([region], 8, torch.device("cpu"), seed=3)
    patches = sampler.sample(64)[:, 0].numpy()
    assert patches.shape == (64, 8, 8)
    symmetries = set()
    for patch in patches:
        y, x = divmod(int(patch.min()), 50)  # the crop's top-left holds its smallest value
        crop = region[y : y + 8, x : x + 8]
        matches = [s for s in range(8) if np.array_equal(augment(crop, s), patch)]
        assert matches, "not an augmented crop"
        symmetries.add(matches[0])
    assert len(symmetries) == 8
    again = DevicePatchSampler([region], 8, torch.device("cpu"), seed=3).sample(64)[:, 0].numpy()
    np.testing.assert_array_equal(patches, again)


def test_device_patch_sampler_weights_regions_by_positions():
    small, large = np.zeros((10, 10), np.float32), np.ones((10, 100), np.float32)
    sampler = DevicePatchSampler([small, large], 8, torch.device("cpu"), seed=0)
    means = sampler.sample(2000)[:, 0].mean(dim=(1, 2)).numpy()
    # positions: 3*3 = 9 in the small region, 3*93 = 279 in the large one
    assert np.mean(means == 1.0) == pytest.approx(279 / 288, abs=0.03)


def test_colearned_noise_model_starts_from_the_data_noise_line():
    from napari_divnoising.training.noise_setup import resolve_noise_model

    rng = np.random.default_rng(1)
    signal = np.repeat(np.linspace(5, 200, 96)[None], 96, axis=0)
    frames = [rng.normal(signal, np.sqrt(3.0 * signal + 4.0)) for _ in range(3)]  # var = 3 s + 4
    started = resolve_noise_model(None, float(np.mean(frames)), float(np.std(frames)), frames, TrainingConfig())
    assert abs(started.a - 3.0) < 0.4
    flat = resolve_noise_model(None, float(np.mean(frames)), float(np.std(frames)), frames,
                               TrainingConfig(noise_warm_start=False))
    assert flat.a == 0.0 and flat.b > 0


def test_a_noise_model_estimated_from_the_training_images_is_a_fixed_gmm(monkeypatch):
    from napari_divnoising import noise_model_fitting
    from napari_divnoising.noise_models import GMMNoiseModel
    from napari_divnoising.training import ESTIMATED, noise_setup

    def quick_fit(images, **kw):  # the same fit with fewer iterations (the fit has its own tests)
        return noise_model_fitting.fit_gmm_from_noisy(images, explore_iterations=300, polish_iterations=30, **kw)

    monkeypatch.setattr(noise_setup, "fit_gmm_from_noisy", quick_fit)

    rng = np.random.default_rng(3)
    signal = np.repeat(np.linspace(5, 200, 64)[None], 64, axis=0)
    frames = np.stack([np.round(rng.poisson(signal / 2.0) * 2.0) for _ in range(3)]).astype(np.float32)
    started = next(iter(train_iter(frames, ESTIMATED, TrainingConfig(max_steps=1, device="cpu"))))
    noise_model = started.model.noise_model
    assert isinstance(noise_model, GMMNoiseModel) and not any(p.requires_grad for p in noise_model.parameters())
    assert started.config["network"] == "hierarchical"  # a given (not co-learned) noise model: the CPU's network
    with torch.no_grad():  # the images' noise: variance 2 * signal
        assert float(noise_model.variance(torch.tensor([100.0], dtype=torch.float64))) == pytest.approx(200, rel=0.2)
    done = [e for e in train_iter(frames, 10.0, tiny_config(max_steps=2)) if isinstance(e, TrainingDone)][-1]
    with pytest.raises(DivNoisingError, match="keeps its own noise model"):
        next(iter(train_iter(frames, ESTIMATED, tiny_config(max_steps=2), resume=done.model)))


def test_the_cpu_trains_the_hierarchical_network_unless_a_plain_gaussian_is_co_learned():
    frames = np.zeros((2, 80, 80), np.float32) + np.arange(80)
    clipped = np.clip(np.round(np.random.default_rng(0).normal(4.0, 3.0, (2, 80, 80))), 3, 255).astype(np.float32)
    for images, noise, network, clipping in (
        (frames, 10.0, "hierarchical", True),
        (frames, COLEARN, "divnoising", True),  # nothing clipped: a plain Gaussian density is co-learned
        (frames, None, "divnoising", True),
        (iter(list(clipped)), COLEARN, "hierarchical", True),  # clipped at 3: the noise model knows it
        (clipped, COLEARN, "divnoising", False),
    ):
        config = TrainingConfig(max_steps=1, device="cpu", noise_clipping=clipping)
        started = next(iter(train_iter(images, noise, config)))
        assert started.config["network"] == network and started.model.network.settings()["network"] == network
        if noise is COLEARN:
            assert started.model.noise_model.mean_is_signal == (network == "divnoising")
    asked = next(iter(train_iter(frames, COLEARN, TrainingConfig(max_steps=1, device="cpu", network="hierarchical"))))
    assert asked.config["network"] == "hierarchical"  # what the user asks for is what trains


def test_a_co_learned_run_finds_the_clipping_once_and_the_noise_model_keeps_it(monkeypatch):
    import napari_divnoising.training.noise_setup as noise_setup

    calls = []
    real = noise_setup.clipping_limits

    def counted(images, **kwargs):
        calls.append(len(images))
        return real(images, **kwargs)

    monkeypatch.setattr(noise_setup, "clipping_limits", counted)
    clipped = np.clip(np.round(np.random.default_rng(0).normal(4.0, 3.0, (3, 80, 80))), 3, 255).astype(np.float32)
    started = next(iter(train_iter(clipped, COLEARN, TrainingConfig(max_steps=1, device="cpu"))))
    assert calls == [3]  # once, on every frame (not again on the training part)
    assert started.model.noise_model.floor == 3.0 and started.config["network"] == "hierarchical"
