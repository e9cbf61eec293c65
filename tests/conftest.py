"""Suite-wide test configuration."""

import gc
import os

#: Most pytest-xdist workers ``-n auto`` starts: each holds torch, napari and its viewers (about 1 GB).
MAX_WORKERS = 4


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config):
    return max(1, min(_usable_cores(), MAX_WORKERS))


def _threads_per_worker() -> int | None:
    """Torch threads for one pytest-xdist worker: the cores shared out, so that workers do not oversubscribe."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return None
    return max(1, _usable_cores() // int(workers))


def pytest_configure(config):
    threads = _threads_per_worker()
    if threads is not None:
        # Set before torch starts its thread pools; child processes the tests start inherit it.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_finish(session):
    # Everything imported while collecting (torch, napari, the package) lives for the whole run. Moving
    # it out of the collector's reach makes every later full collection (napari runs one whenever a
    # viewer drops its layers) scan only the objects the tests create.
    gc.collect()
    gc.freeze()
