"""Posterior sampling with a trained model: MMSE, variance, kept samples, MAP, prior samples (docs/method.md 6).

``predict_iter(model, image, n_samples)`` encodes each view of a frame once
(its orientations and latent-grid offsets, :mod:`napari_divnoising.orientations`),
draws latents z ~ q(z|x) and decodes them in batches under ``torch.inference_mode``.
It yields, in order:

- :class:`~napari_divnoising.events.Progress` while encoding (one per tile),
  between tile groups of a tiled decode, and while computing the MAP estimate;
- :class:`SampleBatch` after every batch of samples: the new samples (raw
  units) plus the running MMSE and running variance of the current frame, so a
  viewer can show progress and a user who stops early still has a valid result;
- :class:`PredictionDone` last, holding the :class:`PredictionResult`.

Stacks (a 3-D input: T, Z or S frames) are processed frame by frame; events
carry the frame index. Results have the input's shape; kept samples have shape
``(K, *input shape)`` (sample axis first, for a stack ``(K, frames, Y, X)``).

Modules, one concern each:

- :mod:`.tiling`: tiles (windows around cores, in latent pixels) and the
  decoding plan (tile size, samples and tiles per decoder call, per device);
- :mod:`.noise`: latent noise keyed by (seed, sample, position), seeds;
- :mod:`.engine`: the inference copy of the network, precision, encoding and
  decoding a frame (device tensors in, device tensors out);
- :mod:`.sampling`: :func:`predict_iter`, running moments;
- :mod:`.prior`: :func:`generate_prior_iter`;
- :mod:`.map_estimate`: the MAP estimate from samples;
- :mod:`.memory`: free memory, per-pixel costs, out-of-memory errors;
- :mod:`.results`: the events and the result.

Tiling. Frames larger than the tile size are processed in overlapping tiles
whose margins cover the network's receptive radius
(:meth:`~napari_divnoising.network.DivNoisingVAE.receptive_radius`), and the
latent noise does not depend on the tiling, so tiled results equal untiled
ones up to float rounding: no seams and no blending needed. Memory is bounded
by the tile and batch sizes plus the frame-sized results and latent grid.

On a GPU the tiles are large (a 4096 x 4096 frame is decoded whole when memory
allows), several samples and tiles go into one decoder call, and the running
statistics stay on the device; only what the caller reads goes to the host.
"""

from ..orientations import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, OFFSET_CHOICES, ORIENTATION_CHOICES
from .map_estimate import map_estimate, map_estimate_iter
from .memory import available_memory
from .noise import NOISE_BLOCK, frame_seed, latent_noise
from .prior import generate_prior, generate_prior_iter
from .results import PredictionDone, PredictionResult, PriorBatch, PriorDone, SampleBatch
from .sampling import RunningMoments, predict, predict_iter
from .tiling import check_tile_size, default_batch_size, default_tile_size, min_tile_size, tile_margin

__all__ = [
    "DEFAULT_OFFSETS",
    "DEFAULT_ORIENTATIONS",
    "NOISE_BLOCK",
    "OFFSET_CHOICES",
    "ORIENTATION_CHOICES",
    "PredictionDone",
    "PredictionResult",
    "PriorBatch",
    "PriorDone",
    "RunningMoments",
    "SampleBatch",
    "available_memory",
    "check_tile_size",
    "default_batch_size",
    "default_tile_size",
    "frame_seed",
    "generate_prior",
    "generate_prior_iter",
    "latent_noise",
    "map_estimate",
    "map_estimate_iter",
    "min_tile_size",
    "predict",
    "predict_iter",
    "tile_margin",
]
