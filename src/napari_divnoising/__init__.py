"""napari-divnoising: DivNoising (Prakash, Krull, Jug, ICLR 2021) for napari and the command line.

The package core (noise models, network, training, prediction, I/O) imports
neither Qt nor napari; the widgets live in :mod:`napari_divnoising._widgets`.
"""

__version__ = "0.1.0"

from .errors import DivNoisingError

__all__ = ["DivNoisingError", "__version__"]
