"""The napari panels against the command line: the same work per unit of time, and the window's response.

Issue #15's targets: the panels do at least 90% of the command line's work per minute for fitting,
training and prediction, and a zoom or pan while training is answered in under 100 ms (median).

Each part does the same work both ways on the same data:

- fit: ``divnoising fit-noise-model`` on the calibration stack, against the Noise model panel's Fit on
  the same stack as a layer. Work rate = 1 / seconds; the command's seconds leave out the start-up of
  a bare Python that imports the plugin and torch (measured separately), as the panel's do.
- train: ``divnoising train --max-minutes B`` with the fitted noise model, against the Train panel
  with the same budget and noise model. Work rate = training steps per second of training
  (``history["steps"] / history["elapsed_s"]`` of the trained model: the same clock both ways).
  The panel trains in a child process, as it does for users (``--train-in-process`` for the old
  way); the wall time from the click to the trained model is reported beside the command's (its
  interpreter start-up left out), and so is the share of a core the napari process itself used
  meanwhile (drawing the window, receiving the events).
  Then a second panel run of half the budget queues a pan or zoom of the canvas every 0.5 s and
  times it from being queued until the canvas has repainted (what a user waits for after moving the
  mouse); its training rate is reported too, but the ratio uses the first, untouched run.
- predict: ``divnoising predict --samples N`` on one training image (the first frame of a stack) with
  the command line's model, against the Predict panel with the same model file, image and N.
  Work rate = 1 / seconds, the command's again without start-up.

The ratio panel rate / command rate should be >= 0.9. Run it on an otherwise idle machine (the
command line and the panels then compete with nothing else), from the repository root, under a
virtual display the size of a 1080p screen:

    xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/bench_gui.py [--quick] [--data DIR]

Data: the FMD folder (``calibration_fov01.tif``, ``train_noisy.tif``; ``--data`` or
``DIVNOISING_FMD_DIR``, default ``data/fmd_bpae_b``; a missing folder is an error), or the plugin's
synthetic sample with ``--sample`` or ``--quick``. ``--quick`` is a smoke run (tiny budgets, seconds
per part; the numbers mean nothing). Writes ``results/gui.json`` and ``results/gui.md``
(``gui_quick.*`` with ``--quick``).
Budget: ``--train-minutes`` (default 1) for the command line's model and the panel's, half of it
for the probed run, plus the fits and predictions: about 4 minutes on 2 CPU cores per repeat
(``--repeats``, default 3: the command line and the panels alternate and medians are reported).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, fmd_dir, fmt, machine_info, machine_markdown, markdown_table, write_results  # noqa: E402

PLUGIN = "napari-divnoising"
FMD_DIR = fmd_dir()
TARGET_RATIO = 0.9
TARGET_LATENCY_MS = 100.0
PROBE_INTERVAL_S = 0.5


# ----------------------------------------------------------------------------- data


def prepare_data(folder: Path, data_dir: Path | None, quick: bool) -> dict[str, Any]:
    """TIFFs for the command line and arrays for the panels: the FMD files, or the synthetic sample."""
    import tifffile

    from napari_divnoising._sample_data import calibration_stack, noisy_image

    if not quick and data_dir is not None and (data_dir / "calibration_fov01.tif").exists():
        calibration = tifffile.imread(data_dir / "calibration_fov01.tif")
        train = tifffile.imread(data_dir / "train_noisy.tif")
        source = f"FMD folder {data_dir.name}"
    else:
        calibration = calibration_stack()
        train = noisy_image()[0]
        source = "synthetic sample (napari_divnoising._sample_data)"
        if quick:
            calibration, train = calibration[:6, :64, :64], train[:128, :128]
    predict = train[0] if train.ndim == 3 else train  # one image: prediction time does not grow with the stack
    paths = {key: folder / f"{key}.tif" for key in ("calibration", "train", "predict")}
    for key, array in (("calibration", calibration), ("train", train), ("predict", predict)):
        tifffile.imwrite(paths[key], array)
    return {"calibration": calibration, "train": train, "predict": predict, "paths": paths, "source": source,
            "shapes": {"calibration": list(calibration.shape), "train": list(train.shape),
                       "predict": list(predict.shape)}}


# ----------------------------------------------------------------------------- command line


def run_cli(args: list[str], timeout: float = 1800.0) -> float:
    """Run ``divnoising ARGS`` in a fresh interpreter (single-threaded BLAS left as the user has it); seconds."""
    t0 = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "napari_divnoising.cli", *args], capture_output=True, text=True,
                           timeout=timeout, cwd=REPO_ROOT)
    seconds = time.perf_counter() - t0
    if child.returncode != 0:
        tail = (child.stderr or child.stdout).strip().splitlines()
        raise RuntimeError(f"divnoising {args[0]} failed: {tail[-1] if tail else child.returncode}")
    return seconds


def startup_seconds(repeats: int = 3) -> float:
    """Median seconds for a fresh interpreter to import the command line and torch and exit."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, napari_divnoising.cli"], check=True, cwd=REPO_ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def steps_per_second(model_path: Path) -> tuple[int, float]:
    """Steps and steps per second of training recorded in a model file's history.

    The best-model file is rewritten at the end of training with the whole history (the last
    checkpoint may have been written at the last validation, before the run's time was recorded).
    """
    from napari_divnoising.model_io import load_model

    return _rate(load_model(model_path).history)


def _rate(history: dict[str, Any]) -> tuple[int, float]:
    steps, elapsed = int(history.get("steps", 0)), float(history.get("elapsed_s") or 0.0)
    return steps, (steps / elapsed if elapsed > 0 else float("nan"))


# ----------------------------------------------------------------------------- panels


def _process_cpu_s() -> float:
    """CPU seconds of this process, all its threads (not its children)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.005)


#: How the script waits for a panel: "event-loop" runs Qt's event loop as napari does (the main thread
#: sleeps until an event comes); "polling" calls processEvents() every 5 ms from the main thread, which
#: napari never does (this script's way until the event loop replaced it; kept to compare the two).
WAIT_MODES = ("event-loop", "polling")
WAIT_MODE = "event-loop"


def wait_for(runner: Any, timeout: float, between: Callable[[], None] | None = None) -> None:
    """Run the GUI until a panel's worker has finished and its end was handled (``between()`` meanwhile)."""
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    if WAIT_MODE == "polling":
        while runner.running or not runner.settled:
            if time.monotonic() > end:
                runner.stop()
                raise TimeoutError("the panel did not finish in time")
            if between is not None:
                between()
            QApplication.processEvents()
            time.sleep(0.005)
        return
    loop = QEventLoop()
    timed_out = []

    def check() -> None:
        if not (runner.running or not runner.settled):
            loop.quit()
        elif time.monotonic() > end:
            timed_out.append(True)
            loop.quit()
        elif between is not None:
            between()

    timer = QTimer()
    timer.setInterval(50 if between is not None else 250)
    timer.timeout.connect(check)
    timer.start()
    try:
        loop.exec() if hasattr(loop, "exec") else loop.exec_()
    finally:
        timer.stop()
    if timed_out:
        runner.stop()
        raise TimeoutError("the panel did not finish in time")


class LatencyProbe:
    """Queue a pan or zoom of the canvas every PROBE_INTERVAL_S and time it until the canvas has repainted."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.latencies_ms: list[float] = []
        self._next = time.monotonic() + PROBE_INTERVAL_S
        self._queued_at: float | None = None
        self._count = 0

    def __call__(self) -> None:
        from qtpy.QtCore import QTimer

        if self._queued_at is not None or time.monotonic() < self._next:
            return
        self._queued_at = time.perf_counter()
        QTimer.singleShot(0, self._act)

    def _act(self) -> None:
        camera = self.viewer.camera
        self._count += 1
        if self._count % 2:
            camera.zoom = camera.zoom * (1.1 if self._count % 4 == 1 else 1 / 1.1)
        else:
            center = list(camera.center)
            center[-1] += 5.0 if self._count % 4 == 2 else -5.0
            camera.center = tuple(center)
        self.viewer.window._qt_viewer.canvas._scene_canvas.native.repaint()  # synchronous: the frame is drawn
        self.latencies_ms.append(1000.0 * (time.perf_counter() - self._queued_at))
        self._queued_at = None
        self._next = time.monotonic() + PROBE_INTERVAL_S


def run_panels(data: dict[str, Any], train_minutes: float, n_samples: int,
               cli_model: Path, probe_minutes: float) -> dict[str, Any]:
    """Fit, train and predict in the napari panels; seconds, rates and the canvas latencies."""
    import napari

    viewer = napari.Viewer(show=True, title="bench_gui")
    viewer.window._qt_window.resize(1920, 1080)
    try:
        viewer.add_image(data["calibration"], name="calibration", visible=False)
        viewer.add_image(data["train"], name="train")
        viewer.add_image(data["predict"], name="predict")
        panels = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in ("Noise model", "Train",
                                                                                          "Predict")}
        noise, train, predict = panels["Noise model"], panels["Train"], panels["Predict"]
        pump(1.0)
        out: dict[str, Any] = {}

        noise.calibration_layer.set_layer("calibration")
        t0 = time.perf_counter()
        noise.fit_button.click()
        wait_for(noise.runner, 1800)
        out["fit_s"] = time.perf_counter() - t0

        train.images.set_checked(["train"])
        train.budget_unit.setCurrentText("minutes")
        train.budget_value.setValue(train_minutes)
        t0, cpu0 = time.perf_counter(), _process_cpu_s()
        train.train_button.click()
        wait_for(train.runner, 60 * train_minutes * 3 + 300)
        out["train_wall_s"] = time.perf_counter() - t0
        out["gui_cpu_share"] = (_process_cpu_s() - cpu0) / out["train_wall_s"]
        out["train_steps"], out["train_steps_per_s"] = _rate(train.model.history)

        # The window's response is measured in a second, shorter run: the probe's own repaints take
        # CPU time from training, so the rate above is measured without it.
        if probe_minutes <= 0:
            return _predict(predict, cli_model, n_samples, out)
        train.budget_value.setValue(probe_minutes)
        probe = LatencyProbe(viewer)
        train.train_button.click()
        wait_for(train.runner, 60 * probe_minutes * 3 + 300, between=probe)
        out["probed_steps_per_s"] = _rate(train.model.history)[1]
        out["latency_ms"] = probe.latencies_ms
        return _predict(predict, cli_model, n_samples, out)
    finally:
        viewer.close()


def _predict(predict: Any, cli_model: Path, n_samples: int, out: dict[str, Any]) -> dict[str, Any]:
    if not predict.load_model_file(cli_model):
        raise RuntimeError("the Predict panel could not load the command line's model")
    predict.image_layer.set_layer("predict")
    predict.n_samples.setValue(n_samples)
    predict.keep_samples.setValue(0)
    t0 = time.perf_counter()
    predict.predict_button.click()
    wait_for(predict.runner, 1800)
    out["predict_s"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- both


def _train_in_child() -> bool:
    from napari_divnoising._widgets import _core

    return bool(_core.TRAIN_IN_CHILD_PROCESS)


def run(quick: bool = False, data_dir: Path | None = FMD_DIR, train_minutes: float | None = None,
        n_samples: int | None = None, repeats: int = 1) -> dict[str, Any]:
    """Measure the command line and the panels on the same work; return the figures and the ratios.

    With ``repeats`` > 1 the command line and the panels alternate that many times and the medians
    are reported (a virtual machine's speed drifts by tens of percent between minutes).
    """
    train_minutes = train_minutes if train_minutes is not None else (0.1 if quick else 1.0)
    n_samples = n_samples if n_samples is not None else (5 if quick else 100)
    info = machine_info()
    runs: list[dict[str, Any]] = []
    latency: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_gui_") as tmp:
        folder = Path(tmp)
        data = prepare_data(folder, data_dir, quick)
        paths = data["paths"]
        startup = startup_seconds(1 if quick else 3)
        nm, model = folder / "nm.npz", folder / "model.pt"
        for repeat in range(repeats):
            cli: dict[str, Any] = {"startup_s": startup}
            cli["fit_s"] = run_cli(["fit-noise-model", "--calibration", str(paths["calibration"]), "--out",
                                    str(nm), "--force"]) - startup
            cli["train_wall_s"] = run_cli(
                ["train", "--data", str(paths["train"]), "--noise-model", str(nm), "--out", str(model),
                 "--max-minutes", str(train_minutes), "--force"], timeout=60 * train_minutes * 3 + 600) - startup
            cli["train_steps"], cli["train_steps_per_s"] = steps_per_second(model)
            cli["predict_s"] = run_cli(["predict", "--model", str(model), "--input", str(paths["predict"]),
                                        "--out-dir", str(folder / "out"), "--samples", str(n_samples),
                                        "--save-samples", "0", "--force"]) - startup
            gui = run_panels(data, train_minutes, n_samples, model,
                             probe_minutes=train_minutes / 2 if repeat == 0 else 0.0)
            latency += gui.pop("latency_ms", [])
            ratios = {
                "fit": cli["fit_s"] / gui["fit_s"],
                "train": gui["train_steps_per_s"] / cli["train_steps_per_s"],
                "predict": cli["predict_s"] / gui["predict_s"],
            }
            runs.append({"cli": cli, "gui": gui, "ratios": ratios})
    cli = {key: statistics.median(r["cli"][key] for r in runs) for key in runs[0]["cli"]}
    gui = {key: statistics.median(r["gui"][key] for r in runs if key in r["gui"])
           for key in runs[0]["gui"]}
    ratios = {part: statistics.median(r["ratios"][part] for r in runs) for part in runs[0]["ratios"]}
    ratio_range = {part: [min(r["ratios"][part] for r in runs), max(r["ratios"][part] for r in runs)]
                   for part in ratios}
    latency_summary = {
        "n": len(latency),
        "median_ms": statistics.median(latency) if latency else None,
        "max_ms": max(latency) if latency else None,
    }
    targets = {f"{part}_ratio_ge_{TARGET_RATIO}": bool(r >= TARGET_RATIO) for part, r in ratios.items()}
    if latency:
        targets[f"latency_median_lt_{TARGET_LATENCY_MS:.0f}ms"] = bool(latency_summary["median_ms"] < TARGET_LATENCY_MS)
    return {
        "machine": info, "quick": quick, "data": data["source"], "shapes": data["shapes"],
        "train_minutes": train_minutes, "n_samples": n_samples, "cli": cli, "gui": gui, "ratios": ratios,
        "repeats": repeats, "ratio_range": ratio_range, "runs": runs, "wait_mode": WAIT_MODE,
        "panel_trains_in": "child process" if _train_in_child() else "napari's process",
        "latency_while_training": latency_summary, "latency_ms": latency, "targets": targets,
    }


def markdown(out: dict[str, Any]) -> str:
    cli, gui, ratios = out["cli"], out["gui"], out["ratios"]
    spread = out.get("ratio_range", {})

    def ratio(part: str) -> str:
        low_high = spread.get(part)
        if out.get("repeats", 1) > 1 and low_high:
            return f"{fmt(ratios[part])} ({fmt(low_high[0])}-{fmt(low_high[1])})"
        return fmt(ratios[part])

    rows = [
        ["fit noise model (s)", cli["fit_s"], gui["fit_s"], ratio("fit")],
        [f"train {fmt(out['train_minutes'])} min (steps/s)", cli["train_steps_per_s"], gui["train_steps_per_s"],
         ratio("train")],
        [f"predict {out['n_samples']} samples (s)", cli["predict_s"], gui["predict_s"], ratio("predict")],
    ]
    if "train_wall_s" in gui and "train_wall_s" in cli:
        rows.insert(2, [f"train {fmt(out['train_minutes'])} min: wall time from start to model (s)",
                        cli["train_wall_s"], gui["train_wall_s"], ""])
    lat = out["latency_while_training"]
    lines = [
        "# Panels against the command line" + (" (quick smoke run: not representative)" if out["quick"] else ""),
        "",
        machine_markdown(out["machine"]),
        "",
        f"Data: {out['data']}, calibration {out['shapes']['calibration']}, training images {out['shapes']['train']}, "
        f"predicted image {out['shapes']['predict']}. "
        f"Command-line seconds leave out the interpreter start-up ({fmt(cli['startup_s'])} s). "
        + (f"Medians of {out['repeats']} alternating repeats (ratio range in brackets)." if out.get("repeats", 1) > 1
           else "One run.")
        + (" The script waited for the panels by running Qt's event loop, as napari does."
           if out.get("wait_mode", "polling") == "event-loop"
           else " The script waited for the panels by calling processEvents() every 5 ms (polling)."),
        "",
        markdown_table(["work", "command line", "panels", f"panels / command line (target >= {TARGET_RATIO})"],
                       rows),
        "",
        f"The Train panel trained in a {out.get('panel_trains_in', 'child process')}"
        + (f"; meanwhile napari's process used {fmt(100 * gui['gui_cpu_share'])} % of one core (drawing the window, "
           "receiving the events)." if "gui_cpu_share" in gui else "."),
        "",
        f"Canvas pan/zoom while training (a second, {fmt(out['train_minutes'] / 2)}-minute run, a pan or zoom every "
        f"{PROBE_INTERVAL_S} s): median {fmt(lat['median_ms'])} ms, worst {fmt(lat['max_ms'])} ms over "
        f"{lat['n']} probes (target: median < {TARGET_LATENCY_MS:.0f} ms); training meanwhile ran at "
        f"{fmt(gui['probed_steps_per_s'])} steps/s.",
        "",
        "Targets met: " + ", ".join(f"{k} {v}" for k, v in out["targets"].items()) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    global WAIT_MODE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets")
    parser.add_argument("--data", type=Path, default=FMD_DIR, help="FMD folder (default: %(default)s)")
    parser.add_argument("--train-minutes", type=float, default=None, help="training budget (default 1; quick 0.1)")
    parser.add_argument("--samples", type=int, default=None, help="samples per prediction (default 100; quick 5)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating command-line/panel repeats (default 3)")
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--wait", choices=WAIT_MODES, default=WAIT_MODE,
                        help="how the script waits for a panel (default: %(default)s, as napari runs)")
    parser.add_argument("--sample", action="store_true", help="use the plugin's synthetic sample, not the FMD data")
    parser.add_argument("--train-in-process", action="store_true",
                        help="the Train panel trains in napari's process (before: in a child process, as for users)")
    args = parser.parse_args()
    WAIT_MODE = args.wait
    if args.train_in_process:
        from napari_divnoising._widgets import _core

        _core.TRAIN_IN_CHILD_PROCESS = False
    if args.sample:
        args.data = None
    elif not args.quick and not (args.data / "calibration_fov01.tif").exists():
        parser.exit(2, f"bench_gui: no FMD data in {args.data} (calibration_fov01.tif): give --data DIR or set "
                       "DIVNOISING_FMD_DIR, or --sample for the plugin's synthetic sample.\n")
    out = run(args.quick, args.data, args.train_minutes, args.samples, repeats=1 if args.quick else args.repeats)
    text = markdown(out)
    kwargs = {"out_dir": args.out_dir} if args.out_dir is not None else {}
    for path in write_results("gui_quick" if args.quick else "gui", out, text, **kwargs):
        print("wrote", path)
    print(text)


if __name__ == "__main__":
    main()
