"""Loading the benchmark scripts (``benchmarks/*.py``, not a package) as modules for their smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str, directory: Path = BENCH_DIR):
    """The script ``directory/name.py`` as a module (``benchmarks/`` on ``sys.path`` for its helpers)."""
    spec = importlib.util.spec_from_file_location(f"_smoke_{name}", directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def benchmark_script():
    """``benchmark_script(name)``: see :func:`load_benchmark`."""
    return load_benchmark
