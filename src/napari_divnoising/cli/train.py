"""``divnoising train``: train (or continue training) a DivNoising model on noisy images."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import DivNoisingError
from ..training.config import TrainingConfig
from ._common import check_output_path, checkpoint_bytes
from ._options import add_config_options

#: The TrainingConfig fields offered as options (help and defaults from the field metadata).
TRAIN_OPTIONS = ("max_minutes", "max_steps", "patch_size", "batch_size", "network", "depth", "start_filters", "z_dim",
                 "beta", "learning_rate", "kl_annealing_steps", "device", "seed")

DESCRIPTION = """\
Train a DivNoising model on noisy images only, and save it as one file.

Give one or more TIFF images or stacks (frames of a stack are separate
images) and a noise model: a GMM fitted with `divnoising fit-noise-model`
(--noise-model), a GMM estimated from the training images alone
(--estimate-noise: no calibration data needed), a Gaussian noise model
learned together with the network (--co-learn), bootstrapping (--bootstrap:
co-learn for half the budget, fit a GMM to that model's denoising, train
with it for the other half), or Gaussian noise of known sigma (--sigma). Training stops after
--max-minutes or --max-steps, whichever comes first (default: 10 minutes), or
earlier when the validation loss stops improving.

The best model (lowest validation loss) is written to --out; the most recent
one, with the optimizer state, next to it with ".last" before the suffix
(model.pt -> model.last.pt). Continue training with --resume. Ctrl-C stops
and keeps both files.

examples:
  divnoising train --data noisy.tif --estimate-noise --out model.pt
  divnoising train --data noisy.tif --co-learn --out model.pt
  divnoising train --data a.tif --data b.tif --noise-model nm.npz --out model.pt --max-minutes 30
  divnoising train --data noisy.tif --resume model.pt --out model.pt --max-minutes 10
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``train`` command."""
    p = subparsers.add_parser(
        "train", help="train a DivNoising model on noisy images", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", action="append", required=True, metavar="IMG.tif",
                   help="noisy training image or stack (repeat for several files)")
    noise = p.add_argument_group("noise model (one of these; not needed with --resume)")
    noise.add_argument("--noise-model", metavar="NM.npz", help="GMM noise model from `divnoising fit-noise-model`")
    noise.add_argument("--estimate-noise", action="store_true",
                       help="estimate a GMM noise model from the training images alone (their noise read as "
                       "Poisson-Gaussian), before training")
    noise.add_argument("--co-learn", action="store_true",
                       help="learn a Gaussian noise model (variance = a * signal + b) with the network")
    noise.add_argument("--bootstrap", action="store_true",
                       help="co-learn for half the budget, fit a GMM to that model's denoising of the data, then "
                       "train with the GMM for the other half")
    add_config_options(noise, TrainingConfig, ["sigma_min", "noise_clipping"])
    noise.add_argument("--sigma", type=float, metavar="S", help="fixed Gaussian noise of standard deviation S")
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="model file to write")
    add_config_options(p, TrainingConfig, TRAIN_OPTIONS, flags={"learning_rate": "--lr"},
                       keep_defaults=("device", "seed"))
    p.add_argument("--resume", metavar="MODEL.pt", help="continue training this model (same network and noise model)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace, resume) -> TrainingConfig:  # noqa: F821
    from ..training import TrainingConfig

    defaults = TrainingConfig()
    previous = resume.config if resume is not None else {}

    def pick(value, name):
        if value is not None:
            return value
        return previous.get(name, getattr(defaults, name))

    max_minutes = args.max_minutes
    if max_minutes is None and args.max_steps is None:
        max_minutes = defaults.max_minutes
    return TrainingConfig(
        patch_size=pick(args.patch_size, "patch_size"),
        batch_size=pick(args.batch_size, "batch_size"),
        network=args.network,  # empty: chosen for the network, or the continued model's own
        depth=args.depth,
        start_filters=args.start_filters,
        z_dim=args.z_dim,
        beta=pick(args.beta, "beta"),
        learning_rate=args.lr if args.lr is not None else defaults.learning_rate,
        max_minutes=max_minutes,
        max_steps=args.max_steps,
        kl_annealing_steps=args.kl_annealing_steps,
        sigma_min=args.sigma_min,
        noise_clipping=pick(args.noise_clipping, "noise_clipping"),
        device=args.device,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    """Train with a progress bar and print a summary; returns the exit status."""
    from tqdm import tqdm

    from ..device import resolve_device
    from ..io import as_image_stack, read_tiff
    from ..model_io import last_checkpoint_path, load_model
    from ..training import (
        COLEARN,
        ESTIMATED,
        TrainingDone,
        TrainingStarted,
        TrainingWarning,
        TrainStep,
        Validation,
        train_iter,
    )

    chosen = [bool(args.noise_model), args.estimate_noise, bool(args.co_learn), args.sigma is not None, args.bootstrap]
    if sum(chosen) > 1:
        raise DivNoisingError("give only one of --noise-model, --estimate-noise, --co-learn, --sigma and --bootstrap.")
    if sum(chosen) == 0 and not args.resume:
        raise DivNoisingError("choose a noise model: --noise-model NM.npz, --estimate-noise, --co-learn, --sigma S or "
                              "--bootstrap.")
    for flag, value in (("--sigma-min", args.sigma_min), ("--[no-]noise-clipping", args.noise_clipping)):
        if value is not None and not (args.co_learn or args.bootstrap):
            raise DivNoisingError(f"{flag} only applies with --co-learn or --bootstrap.")
    if args.bootstrap and args.resume:
        raise DivNoisingError("--bootstrap trains new models; continue a bootstrapped model with --resume alone.")
    if args.estimate_noise and args.resume:
        raise DivNoisingError("--estimate-noise starts new models; a model continued with --resume keeps its own "
                              "noise model.")

    resume = load_model(args.resume) if args.resume else None
    config = _config(args, resume)
    config.validate()  # before the settings are used to size the output
    resolve_device(config.device)  # a device this machine lacks is one line, before any file is read
    out = Path(args.out)
    # Continuing in place may replace the model it continues without --force; the place is checked all the same.
    same_file = resume is not None and out.exists() and out.resolve() == Path(args.resume).resolve()
    out = check_output_path(out, args.force or same_file, planned_bytes=checkpoint_bytes(config))
    if out.suffix == "":
        raise DivNoisingError(f"--out needs a file name with a suffix such as .pt; got {args.out}.")

    if args.noise_model:
        from ..noise_model_io import load_gmm_npz

        noise_model = load_gmm_npz(args.noise_model)
    elif args.sigma is not None:
        noise_model = args.sigma
    elif args.co_learn:
        noise_model = COLEARN
    elif args.estimate_noise:
        noise_model = ESTIMATED
    else:
        noise_model = resume.noise_model  # continue with the model's own noise model

    # checked here too so that messages name the file
    images = [as_image_stack(read_tiff(path), name=Path(path).name, min_size=config.patch_size) for path in args.data]

    if args.bootstrap:
        from ..workflows import BootstrapPhase, bootstrap_iter, split_budget

        half = split_budget(config)
        events = bootstrap_iter(images, half, first_config=half, checkpoint_path=out)
    else:
        events = train_iter(images, noise_model, config, resume=resume, checkpoint_path=out)
    bar = None  # shown from the first step, so that a run refused at its start prints only its error
    done = None
    started = None
    last_step = None
    interrupted = False
    try:
        for event in events:
            if isinstance(event, TrainingStarted):
                started = event
                used = event.config
                tqdm.write(
                    f"Training on {event.device}: batch {used['batch_size']} x "
                    f"{used['patch_size']}x{used['patch_size']}"
                    f" patches{_device_default_note(args)}, {used['network']} network, depth {used['depth']}, "
                    f"{used['start_filters']} filters, {used['z_dim']} latent channels"
                    f"{' per level' if used['network'] == 'hierarchical' else ''}, {event.n_parameters:,} parameters, "
                    f"{event.n_train_pixels:,} training pixels, validation by {event.validation_split}"
                    + (f", continuing from step {event.start_step}" if event.start_step else "")
                )
            elif isinstance(event, TrainStep):
                last_step = event
                if bar is None:
                    bar = tqdm(total=1000, bar_format="{desc} {percentage:3.0f}%|{bar}|", desc="training",
                               dynamic_ncols=True, file=sys.stderr)
                bar.n = int(1000 * event.fraction)
                left = _format_seconds(event.eta_s)
                rate = f", {event.steps_per_s:.1f} steps/s" if event.steps_per_s > 0 else ""
                bar.set_description_str(f"step {event.step}, loss {event.loss:.4f}{rate}, {left} left", refresh=True)
            elif isinstance(event, Validation):
                tqdm.write(
                    f"step {event.step}: validation loss {event.val_loss:.4f}" + (" (best)" if event.is_best else "")
                )
            elif isinstance(event, TrainingWarning):
                tqdm.write(f"warning: {event.message}")
            elif isinstance(event, TrainingDone):
                done = event
            elif args.bootstrap and isinstance(event, BootstrapPhase):
                tqdm.write(event.message)
    except KeyboardInterrupt:
        interrupted = True
        events.close()  # writes the last checkpoint (and the best if none was written yet)
    finally:
        if bar is not None:
            bar.close()

    last = last_checkpoint_path(out)
    if interrupted or done is None:
        step = last_step.step if last_step else (started.start_step if started else 0)
        print(f"Interrupted at step {step}.")
        if out.exists():
            print(f"Best model so far: {out}")
        if last.exists():
            print(f"Last model (continue with --resume {last}): {last}")
        return 130
    if done.unsaved:
        out = _rescue(done.model, out)
    _print_summary(done, out, last)
    return 0


def _device_default_note(args: argparse.Namespace) -> str:
    if args.patch_size is None and args.batch_size is None and not args.resume:
        return " (device defaults; set --batch-size/--patch-size to change)"
    return ""


def _rescue(model, out: Path) -> Path:
    """Write a model that could not be saved to ``out`` into the temporary folder, so it is never lost."""
    import tempfile
    import time

    from ..model_io import save_model

    rescue = Path(tempfile.gettempdir()) / f"{out.stem}-unsaved-{time.strftime('%Y%m%d-%H%M%S')}{out.suffix or '.pt'}"
    try:
        save_model(model, rescue)
    except (OSError, DivNoisingError) as exc:
        raise DivNoisingError(
            f"Could not write the trained model to {out} nor to {rescue} ({exc}); free some disk space and "
            "train again (continue from the last checkpoint with --resume if one was written)."
        ) from None
    print(f"Could not write the model to {out}; it was saved to {rescue} instead.", file=sys.stderr)
    return rescue


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _print_summary(done, out: Path, last: Path) -> None:
    print(f"Done: {done.steps} steps in total. This run ended: {done.reason_text}, after "
          f"{done.elapsed_s / 60:.1f} min and {100 * done.budget_used:.0f}% of its budget.")
    if done.best_val_loss is not None:
        print(f"Best validation loss {done.best_val_loss:.4f} at step {done.best_step}.")
    from ..noise_models import GaussianNoiseModel

    nm = done.model.noise_model
    if isinstance(nm, GaussianNoiseModel) and nm.alpha.requires_grad:
        clipped = [f"{name} {value:g}" for name, value in (("below", nm.floor), ("above", nm.ceiling))
                   if value is not None]
        print(f"Learned noise model: variance = {nm.a:.4g} * signal + {nm.b:.4g} "
              f"(floor sigma {float(nm.sigma_min):.3g}"
              + (f"; values clipped {' and '.join(clipped)}" if clipped else "") + ").")
    print(f"Model (best): {out}")
    print(f"Last state (for --resume): {last}")
