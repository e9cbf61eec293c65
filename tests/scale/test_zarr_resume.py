"""Resumable batch prediction: a run killed with SIGKILL half-way is resumed to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import napari_divnoising
from napari_divnoising.cli import main
from napari_divnoising.scale import ZarrPredictionSettings, predict_to_zarr, read_results
from napari_divnoising.scale.ome import done_units

SRC = str(Path(napari_divnoising.__file__).resolve().parents[1])

# Runs the CLI in a child process that SIGKILLs itself when the third unit's data is written but its
# completion marker is not: the worst moment to die (complete-looking data, no marker).
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from napari_divnoising.scale import units
    calls = []
    real_mark_done = units.mark_done

    def mark_done(*args):
        calls.append(args)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        real_mark_done(*args)

    units.mark_done = mark_done
    from napari_divnoising.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _all_outputs(path: Path) -> dict[str, np.ndarray]:
    res = read_results(path)
    out = {f"mmse{i}": level[...] for i, level in enumerate(res["mmse"])}
    out.update({k: res[k][...] for k in ("variance", "map", "samples")})
    return out


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, model_file, stack_zarr):
    # the same torch thread count in the killed child and here: CPU kernels round differently with it
    args = ["predict", "--model", str(model_file), "--input", str(stack_zarr), "--samples", "5",
            "--save-samples", "2", "--map", "--seed", "11", "--threads", "2"]
    out = tmp_path / "killed.ome.zarr"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", KILLER, *args, "--out", str(out)], env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # Two units are marked complete; the third has its data on disk but no marker, so it counts as not done.
    done = done_units(out)
    assert done.sum() == 2 and done[0, 0, 0] and done[1, 0, 0] and not done[2, 0, 0]
    assert np.abs(read_results(out)["mmse"][0][2]).max() > 0
    # Tear one of its chunks as a crash inside a write would: the resumed run must rewrite it.
    chunk = out / "variance" / "0" / "c" / "2" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:7])

    assert main([*args, "--out", str(out)]) == 0
    assert done_units(out).all()

    reference = tmp_path / "uninterrupted.ome.zarr"
    assert main([*args, "--out", str(reference)]) == 0
    resumed, clean = _all_outputs(out), _all_outputs(reference)
    assert resumed.keys() == clean.keys()
    for name in clean:
        np.testing.assert_array_equal(resumed[name], clean[name], err_msg=name)


def test_resume_computes_only_the_missing_units(tmp_path, model_file, stack_zarr):
    out = tmp_path / "r.ome.zarr"
    settings = ZarrPredictionSettings(n_samples=3, keep_samples=0, seed=4)
    predict_to_zarr(model_file, stack_zarr, out, settings)
    before = read_results(out)["mmse"][0][...]
    # Forget two units as if the run had stopped before them.
    import zarr

    marks = zarr.open_array(str(out / "divnoising_done"), mode="r+")
    marks[1, 0, 0] = 0
    marks[4, 0, 0] = 0
    done = predict_to_zarr(model_file, stack_zarr, out, settings)
    assert done.computed == 2 and done.total == 5
    np.testing.assert_array_equal(read_results(out)["mmse"][0][...], before)


def test_a_store_of_other_data_of_the_same_shape_is_not_resumed(tmp_path, model_file, stack, capsys):
    from napari_divnoising.scale.arrays import write_array_store
    from napari_divnoising.scale.ome import read_info

    data = write_array_store(tmp_path / "stack.ome.zarr", stack, ("t", "y", "x"))
    out = tmp_path / "r.ome.zarr"
    settings = ZarrPredictionSettings(n_samples=2, keep_samples=0, seed=4)
    predict_to_zarr(model_file, data, out, settings)
    before = read_info(out)
    assert before["input"]["fingerprint"]
    changed = stack.copy()
    changed[len(stack) // 2] += 1  # same shape and dtype, another middle frame
    write_array_store(tmp_path / "changed.ome.zarr", changed, ("t", "y", "x"))
    args = ["predict", "--model", str(model_file), "--input", str(tmp_path / "changed.ome.zarr"), "--out", str(out),
            "--samples", "2", "--save-samples", "0", "--seed", "4"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other image data of the same shape" in err[0] and "--force" in err[0]
    assert read_info(out) == before  # untouched
    assert main([*args, "--force"]) == 0
    assert read_info(out)["input"]["fingerprint"] != before["input"]["fingerprint"] and done_units(out).all()


def test_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, model_file, stack_zarr, capsys, monkeypatch):
    import errno

    from napari_divnoising.scale import units

    real = units.mark_done
    calls = []

    def full_after_two(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args)

    monkeypatch.setattr(units, "mark_done", full_after_two)
    out = tmp_path / "r.ome.zarr"
    args = ["predict", "--model", str(model_file), "--input", str(stack_zarr), "--samples", "2",
            "--save-samples", "0", "--seed", "3", "--out", str(out)]
    assert main(args) == 1
    # The progress bar shares stderr; the error itself is one line after it.
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("divnoising predict: error: Could not write")
    assert "No space left on device" in last and "run the same command again" in last
    assert done_units(out).sum() == 2
    monkeypatch.setattr(units, "mark_done", real)
    assert main(args) == 0 and done_units(out).all()
