"""The kinds of results DivNoising produces, in one registry.

Each :class:`OutputKind` says what a result is (for file descriptions), how it is
named (layer and file suffix), shown (colormap, contrast floor) and stored (whether
it has a leading sample axis, whether it may be cast to the input's integer type).
The widgets, the napari writer, :mod:`~napari_divnoising.export` and the command
line all read this registry; a new output layer is one entry here.

Result layers carry their kind and provenance in ``layer.metadata[METADATA_KEY]``
(:func:`result_metadata`), never in their names: :func:`result_kind` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DivNoisingError


@dataclass(frozen=True)
class OutputKind:
    """One kind of result.

    Attributes
    ----------
    name
        Short name (``"mmse"``), the suffix of layer and file names (``<image>_mmse.tif``).
    description
        What the result is, in words (written into TIFF descriptions).
    colormap
        napari colormap of its layer.
    floor_zero
        Contrast limits start at 0 (non-negative quantities such as a variance).
    sample_axis
        The data has a leading axis of samples (or generated images).
    float_only
        Always written as float32, never cast to the input's integer type (e.g. squared units).
    """

    name: str
    description: str
    colormap: str = "gray"
    floor_zero: bool = False
    sample_axis: bool = False
    float_only: bool = False

    def file_name(self, stem: str, suffix: str = ".tif") -> str:
        """``<stem>_<name><suffix>``, e.g. ``cells_mmse.tif``."""
        return f"{stem}_{self.name}{suffix}"

    def layer_name(self, source: str) -> str:
        """Name of the layer holding this result of the image layer ``source``."""
        return f"{source}_{self.name}"


OUTPUT_KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        OutputKind("mmse", "MMSE estimate (mean of the posterior samples)"),
        OutputKind("variance", "per-pixel variance of the posterior samples (uncertainty, squared intensity units)",
                   colormap="magma", floor_zero=True, float_only=True),
        OutputKind("samples", "posterior samples (diverse plausible clean images)", sample_axis=True),
        OutputKind("map", "MAP estimate (mode of the posterior samples by mean shift)"),
        OutputKind("prior", "prior samples (synthetic images decoded from z ~ N(0, I))", sample_axis=True),
    )
}

#: The kinds a prediction produces, in the order they are written.
PREDICTION_KINDS = ("mmse", "variance", "samples", "map")

#: Key of the DivNoising facts in a napari layer's ``metadata``.
METADATA_KEY = "divnoising"


def output_kind(name: str) -> OutputKind:
    """The registered kind ``name``; :class:`DivNoisingError` for an unknown one."""
    try:
        return OUTPUT_KINDS[name]
    except KeyError:
        raise DivNoisingError(f"Unknown output kind {name!r}; one of {', '.join(OUTPUT_KINDS)}.") from None


def imagej_dtype(array: np.ndarray) -> np.ndarray:
    """``array`` in a type ImageJ can hold (uint8, uint16 or float32) without losing values where possible.

    uint8, uint16 and float32 are kept; other integer data whose values fit 0..65535 become
    uint16; everything else becomes float32 (ImageJ has no int8/int16/int32/float64 images).
    """
    array = np.asarray(array)
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_) and (
        array.size == 0 or (array.min() >= 0 and array.max() <= 65535)
    ):
        return array.astype(np.uint16)
    return array.astype(np.float32)


def result_metadata(
    kind: str, *, source: str | None = None, model_name: str | None = None, n_samples: int | None = None,
    seed: int | None = None, orientations: int | None = None, offsets: int | None = None,
) -> dict[str, Any]:
    """The ``layer.metadata`` entry that marks a layer as a DivNoising result of ``kind``, with provenance."""
    output_kind(kind)
    facts: dict[str, Any] = {"kind": kind}
    for key, value in (("source", source), ("model", model_name), ("n_samples", n_samples), ("seed", seed),
                       ("orientations", orientations), ("offsets", offsets)):
        if value is not None:
            facts[key] = value
    return {METADATA_KEY: facts}


def provenance_properties(facts: Mapping[str, Any]) -> dict[str, Any] | None:
    """The facts of a result beyond kind, model, source and sample count that its exported file records
    (the latent noise's seed, the orientations and grid offsets the samples were spread over), or None when it
    has none."""
    extra = {key: facts[key] for key in ("seed", "orientations", "offsets") if facts.get(key) is not None}
    return extra or None


def result_facts(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The DivNoising facts of a layer's ``metadata`` (empty for layers DivNoising did not make)."""
    facts = (metadata or {}).get(METADATA_KEY)
    if not isinstance(facts, Mapping) or facts.get("kind") not in OUTPUT_KINDS:
        return {}
    return dict(facts)


def result_kind(metadata: Mapping[str, Any] | None) -> str | None:
    """The output kind recorded in a layer's ``metadata``, or None for any other layer."""
    return result_facts(metadata).get("kind")
