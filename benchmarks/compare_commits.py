"""Speed of two commits, measured in one run on one machine: is a change "within noise"?

A restructuring should leave the numbers of the speed benchmark where they were. Figures from
different days or machines cannot show that (a virtual machine's speed drifts by tens of percent),
so this script exports both commits (``git archive``) and runs each commit's own benchmark scripts
(``bench_train_step``, ``bench_predict``, ``bench_noise_fit``: their ``run()`` against that commit's
package) in fresh interpreters, alternating old, new, new, old, ... so that drift hits both alike.
It reports per figure the median of each commit, the ratio new/old and the spread of the repeats;
a ratio whose distance from 1 is within the spread of the repeats is "within noise".

    python benchmarks/compare_commits.py OLD [NEW] [--repeats 2] [--parts train_step,predict,noise_fit]

NEW defaults to HEAD. Run it from the repository root on an otherwise idle machine. Writes
``results/commits_<old>_<new>.json`` and ``.md``. Budget on 2 CPU cores: about 4 minutes per commit
and repeat with all parts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, fmt, machine_info, machine_markdown, markdown_table, write_results  # noqa: E402

#: part -> (script, [(label, path into its run() result, smaller is better)])
PARTS: dict[str, tuple[str, list[tuple[str, tuple[str, ...], bool]]]] = {
    "train_step": ("bench_train_step", [
        ("train step (s)", ("step_median_s",), True),
        ("train step, channels-last (s)", ("channels_last_step_median_s",), True),
    ]),
    "predict": ("bench_predict", [
        ("posterior samples (s)", ("predict", "ours_median_s"), True),
        ("MAP estimate (s)", ("map", "median_s"), True),
    ]),
    "noise_fit": ("bench_noise_fit", [
        ("noise-model fit (s)", ("ours_seconds_median",), True),
        ("noise-model held-out NLL (nats/pixel)", ("ours_heldout_nll",), True),
    ]),
}

#: Differences below this fraction count as equal whatever the repeats' spread (timers, rounding).
NOISE_FLOOR = 0.01

CHILD = r"""
import json, sys
tree, script = sys.argv[1], sys.argv[2]
sys.path[:0] = [tree + "/src", tree + "/benchmarks"]
import importlib
module = importlib.import_module(script)
result = module.run(False)
import _common
result["_matmul_gflops"] = _common.matmul_gflops()
print("RESULT " + json.dumps(result, default=float))
"""


def export_commit(commit: str, folder: Path) -> tuple[Path, str]:
    """The commit's files (``git archive``) under ``folder``; returns the tree and the full hash."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = folder / sha[:12]
    archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=REPO_ROOT, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree, sha


def run_part(tree: Path, script: str, timeout: float = 1800.0) -> dict[str, Any]:
    child = subprocess.run([sys.executable, "-c", CHILD, str(tree), script], capture_output=True, text=True,
                           timeout=timeout, cwd=tree)
    for line in child.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (child.stderr or child.stdout).strip().splitlines()
    raise RuntimeError(f"{script} at {tree.name} failed: {tail[-1] if tail else child.returncode}")


def pick(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def compare(old: str, new: str, repeats: int, parts: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="compare_commits_") as tmp:
        trees = {}
        for label, commit in (("old", old), ("new", new)):
            trees[label] = export_commit(commit, Path(tmp))
        values: dict[str, dict[str, list[float]]] = {}
        yardstick: dict[str, list[float]] = {"old": [], "new": []}
        for repeat in range(repeats):
            order = ("old", "new") if repeat % 2 == 0 else ("new", "old")
            for part in parts:
                script, figures = PARTS[part]
                for label in order:
                    print(f"repeat {repeat + 1}/{repeats}: {part} at {label} ({trees[label][1][:8]})", flush=True)
                    result = run_part(trees[label][0], script)
                    yardstick[label].append(result["_matmul_gflops"])
                    for name, path, _ in figures:
                        value = pick(result, path)
                        if value is not None:
                            values.setdefault(name, {"old": [], "new": []})[label].append(value)
    rows = []
    for part in parts:
        for name, _, smaller_is_better in PARTS[part][1]:
            if name not in values or not values[name]["old"] or not values[name]["new"]:
                continue
            old_values, new_values = values[name]["old"], values[name]["new"]
            old_median, new_median = statistics.median(old_values), statistics.median(new_values)
            ratio = new_median / old_median if old_median else float("nan")
            spread = max(_spread(old_values), _spread(new_values), NOISE_FLOOR)
            rows.append({"figure": name, "old": old_median, "new": new_median, "ratio": ratio,
                         "spread": spread, "within_noise": abs(ratio - 1) <= spread,
                         "old_all": old_values, "new_all": new_values, "smaller_is_better": smaller_is_better})
    return {"machine": machine_info(), "old": trees["old"][1], "new": trees["new"][1], "repeats": repeats,
            "parts": parts, "rows": rows,
            "matmul_gflops": {label: statistics.median(v) for label, v in yardstick.items() if v}}


def _spread(values: list[float]) -> float:
    """Half the range of the repeats, relative to their median (0 for one repeat)."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / 2 / statistics.median(values)


def markdown(out: dict[str, Any]) -> str:
    rows = [[r["figure"], r["old"], r["new"], r["ratio"], f"±{100 * r['spread']:.1f} %",
             "yes" if r["within_noise"] else ("better" if (r["ratio"] < 1) == r["smaller_is_better"] else "worse")]
            for r in out["rows"]]
    return "\n".join([
        f"# Speed of {out['old'][:8]} (old) against {out['new'][:8]} (new)",
        "",
        machine_markdown(out["machine"]),
        "",
        f"Each commit's own benchmark scripts, {out['repeats']} repeat(s) each, alternating old/new in one run; "
        "medians. Matrix-product yardstick during the runs: "
        + ", ".join(f"{k} {fmt(v)} GFLOP/s" for k, v in out["matmul_gflops"].items()) + ".",
        "",
        markdown_table(["figure", "old", "new", "new / old", "spread of repeats", "within noise"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--out-dir", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out = compare(args.old, args.new, args.repeats, parts)
    text = markdown(out)
    kwargs = {"out_dir": args.out_dir} if args.out_dir is not None else {}
    for path in write_results(f"commits_{out['old'][:8]}_{out['new'][:8]}", out, text, **kwargs):
        print("wrote", path)
    print(text)


if __name__ == "__main__":
    main()
