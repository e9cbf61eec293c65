"""napari reader for DivNoising results stores (``results.ome.zarr`` from ``divnoising predict --out``).

Opens the MMSE as a multiscale image (its pyramid) and the variance, MAP and kept samples as further
image layers, all lazily (dask arrays over the Zarr chunks) with the input's pixel sizes as layer
scale. The samples layer puts its ``sample`` axis first, so the other axes line up with the MMSE.
Any other path (a TIFF, another Zarr store) is left to other readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari ``get_reader`` hook: a reader for a DivNoising results store, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        from .ome import is_zarr_path, read_info

        if not (is_zarr_path(path) and Path(path).is_dir() and read_info(path) is not None):
            return None
    except Exception:  # noqa: BLE001 - zarr missing or an unreadable store: not ours to open
        return None
    return read_results_layers


def _stem(path: str) -> str:
    name = Path(path).name.rstrip("/")
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_results_layers(path: str | list[str], *, fresh: bool = False) -> list[LayerData]:
    """Layer data tuples (data, kwargs, "image") for every output in a results store, read lazily.

    Layers are named and coloured as the Predict panel names its results (``outputs.OUTPUT_KINDS``)
    and carry their kind and provenance in ``layer.metadata``, so Export and File > Save treat them
    as the results they are.

    ``fresh`` gives the dask arrays names of their own: napari caches dask chunks by name, so a
    store still being written is re-read through fresh arrays to show the units finished since.
    """
    import uuid

    import dask.array as da

    from ..outputs import METADATA_KEY, OUTPUT_KINDS, result_metadata
    from .ome import read_results

    if isinstance(path, list):
        path = path[0]
    res = read_results(path)
    stem = _stem(str(path))
    info = res["info"]
    settings = info.get("settings") or {}
    scale = [float(s) for s in res["scale"][0]]

    def layer_kwargs(kind: str, **extra: Any) -> dict[str, Any]:
        meta = result_metadata(kind, source=stem, model_name=info.get("model"),
                               n_samples=settings.get("n_samples"), seed=info.get("seed"))
        meta[METADATA_KEY]["settings"] = settings
        meta["axes"] = res["axes"]
        return {"name": OUTPUT_KINDS[kind].layer_name(stem), "scale": scale, "colormap": OUTPUT_KINDS[kind].colormap,
                "metadata": meta, **extra}

    token = uuid.uuid4().hex if fresh else None

    def from_zarr(array: Any, name: str) -> Any:
        return da.from_zarr(array, name=f"divnoising-{name}-{token}" if token else None)

    levels = [from_zarr(level, f"mmse{i}") for i, level in enumerate(res["mmse"])]
    layers: list[LayerData] = [
        (levels if len(levels) > 1 else levels[0], layer_kwargs("mmse", multiscale=len(levels) > 1), "image")
    ]
    if res["variance"] is not None:
        layers.append((from_zarr(res["variance"], "variance"), layer_kwargs("variance", visible=False), "image"))
    if res["map"] is not None:
        layers.append((from_zarr(res["map"], "map"), layer_kwargs("map", visible=False), "image"))
    if res["samples"] is not None:
        pos = 1 if res["axes"][0] == "t" else 0  # where the store keeps the sample axis (see ome.py)
        samples = da.moveaxis(from_zarr(res["samples"], "samples"), pos, 0)
        layers.append((samples, layer_kwargs("samples", visible=False, scale=[1.0, *scale]), "image"))
    return layers
