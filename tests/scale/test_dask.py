"""Prediction over Dask: a LocalCluster of two processes, and a scheduler + two workers started as commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import distributed
import numpy as np
import pytest

import napari_divnoising
from napari_divnoising.cli import main
from napari_divnoising.scale import ZarrPredictionSettings, predict_to_zarr, predict_to_zarr_iter, read_results

SRC = str(Path(napari_divnoising.__file__).resolve().parents[1])
# CPU kernels may round differently with different torch thread counts: the same threads per process
# gives the same bits whatever the number of workers.
SETTINGS = ZarrPredictionSettings(n_samples=4, keep_samples=2, compute_map=True, seed=21, threads=1)


def _assert_same_results(a: Path, b: Path) -> None:
    ra, rb = read_results(a), read_results(b)
    assert len(ra["mmse"]) == len(rb["mmse"]) >= 2
    for la, lb in zip(ra["mmse"], rb["mmse"]):
        np.testing.assert_array_equal(la[...], lb[...])
    for name in ("variance", "map", "samples"):
        np.testing.assert_array_equal(ra[name][...], rb[name][...], err_msg=name)


def test_local_cluster_of_two_processes_equals_single_process(tmp_path, model_file, stack_zarr):
    from napari_divnoising.scale.distributed import open_client, worker_model_loads

    single = tmp_path / "single.ome.zarr"
    predict_to_zarr(model_file, stack_zarr, single, SETTINGS)
    client, cluster = open_client(workers=2)
    try:
        assert len(client.scheduler_info()["workers"]) == 2
        out = tmp_path / "cluster.ome.zarr"
        events = list(predict_to_zarr_iter(model_file, stack_zarr, out, SETTINGS, client=client))
        assert events[-1].computed == 5
        _assert_same_results(out, single)
        # Each worker process loaded the model once, and a second job with it loads nothing again.
        loads = worker_model_loads(client)
        assert sorted(loads.values()) == [1, 1]
        other = ZarrPredictionSettings(n_samples=2, keep_samples=0, seed=1)
        predict_to_zarr(model_file, stack_zarr, tmp_path / "second.ome.zarr", other, client=client)
        assert worker_model_loads(client) == loads
    finally:
        client.close()
        cluster.close()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


def test_scheduler_and_two_workers_started_as_separate_processes(tmp_path, model_file, stack_zarr):
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed next to this Python")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    scheduler_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed in finally
    common = {"env": env, "stdout": log, "stderr": subprocess.STDOUT, "cwd": tmp_path}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], **common)]
    try:
        _wait_for(scheduler_file.exists, 120, "scheduler start")
        time.sleep(0.5)  # the file is written once; let it be complete
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(dask), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0"], **common))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=180)

        out = tmp_path / "external.ome.zarr"
        args = ["predict", "--model", str(model_file), "--input", str(stack_zarr), "--samples", "4",
                "--save-samples", "2", "--map", "--seed", "21", "--threads", "1"]
        assert main([*args, "--out", str(out), "--scheduler", address]) == 0
        single = tmp_path / "single.ome.zarr"
        assert main([*args, "--out", str(single)]) == 0
        _assert_same_results(out, single)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def test_unreachable_scheduler_is_one_clear_error(tmp_path, model_file, stack_zarr, capsys, monkeypatch):
    from napari_divnoising.scale import distributed as dist

    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", 2)
    code = main(["predict", "--model", str(model_file), "--input", str(stack_zarr), "--samples", "2",
                 "--out", str(tmp_path / "r.ome.zarr"), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and "Could not connect to the Dask scheduler at tcp://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1
