"""Running units on a Dask cluster: an embedded ``LocalCluster`` or an existing scheduler.

Units are submitted a few per worker at a time (not all at once: a 10^6-unit job
would flood the scheduler), each as :func:`~napari_divnoising.scale.units.run_unit`
with the small picklable :class:`~napari_divnoising.scale.units.Job`. Workers
read their pixels from the input and write their results straight into the
store; only a small dict per unit travels back. Each worker process loads the
model once (a per-process cache). Workers should run one task at a time
(``--nthreads 1``) and use their cores for torch.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..errors import DivNoisingError
from .units import Job, model_loads, run_unit

#: Units queued per worker (one running, the rest waiting), so workers never idle between units.
IN_FLIGHT_PER_WORKER = 2

#: Seconds to wait for a scheduler and its first worker.
CONNECT_TIMEOUT = 60


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise DivNoisingError(
            "--workers and --scheduler need the optional package dask[distributed]: "
            "pip install 'napari-divnoising[scale]'."
        ) from None
    return distributed


def open_client(workers: int | None = None, scheduler: str | None = None) -> tuple[Any, Any]:
    """A Dask client for an existing scheduler, or for a new local cluster of ``workers`` processes.

    Returns ``(client, cluster)``; ``cluster`` is None for an existing scheduler. The caller closes both.
    """
    distributed = _require_distributed()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise DivNoisingError(f"Could not connect to the Dask scheduler at {scheduler} ({exc}).") from None
        return client, None
    cluster = distributed.LocalCluster(
        n_workers=int(workers or 1), threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=40,
    )
    return distributed.Client(cluster, set_as_default=False), cluster


def run_on_dask(job: Job, units: list[tuple[int, int, int]], *, client: Any, share_cores: bool = False
                ) -> Iterator[dict[str, Any]]:
    """Run ``units`` of ``job`` on the cluster of ``client``; yields each unit's result dict as it completes.

    With ``share_cores`` (a local cluster) the workers split this machine's cores between their torch
    threads. When the generator is closed or a unit fails, pending units are cancelled (finished ones
    stay written and marked); the client is left open.
    """
    distributed = _require_distributed()
    futures: list[Any] = []
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            raise DivNoisingError(f"No Dask worker joined within {CONNECT_TIMEOUT} s; start workers first.") from None
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        if share_cores:
            job = replace(job, torch_threads=max(1, (os.cpu_count() or 1) // n_workers))
        pending = iter(units)
        run_id = uuid.uuid4().hex[:12]
        queue = None

        def submit(n: int) -> list[Any]:
            new = []
            for unit in pending:
                key = f"divnoising-{run_id}-{unit[0]}-{unit[1]}-{unit[2]}"
                new.append(client.submit(run_unit, job, unit, key=key, pure=False))
                if len(new) == n:
                    break
            futures.extend(new)
            if queue is not None:
                queue.update(new)
            return new

        queue = distributed.as_completed(submit(IN_FLIGHT_PER_WORKER * n_workers), loop=client.loop)
        for future in queue:
            result = future.result()  # re-raises the worker's error (a DivNoisingError stays one)
            futures.remove(future)
            submit(1)
            yield result
    finally:
        for future in futures:
            future.cancel()


def worker_model_loads(client: Any) -> dict[str, int]:
    """Model loads per worker address (each worker loads a model once)."""
    return client.run(model_loads)
