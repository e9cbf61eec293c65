"""One source for every training default, range and help text: the guide and the CLI are checked against it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from napari_divnoising.cli._options import option_help, settings_table
from napari_divnoising.cli.train import TRAIN_OPTIONS, add_parser
from napari_divnoising.training import TrainingConfig, field_metadata

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user_guide.md"


def _names(advanced: bool) -> list[str]:
    return [f.name for f in dataclasses.fields(TrainingConfig) if field_metadata(f.name)["advanced"] == advanced]


def test_user_guide_tables_match_the_config_metadata():
    text = GUIDE.read_text(encoding="utf-8")
    for advanced in (False, True):
        table = settings_table(TrainingConfig, _names(advanced))
        assert table in text, f"Regenerate the user guide's settings table; expected:\n{table}"


def test_train_command_options_take_help_and_defaults_from_the_config():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    for name in (*TRAIN_OPTIONS, "sigma_min", "noise_clipping"):
        action = actions["lr" if name == "learning_rate" else name]
        assert action.help == option_help(fields[name])
        assert action.default in (None, fields[name].default)
    args = train.parse_args(["--data", "x.tif", "--out", "m.pt", "--co-learn"])
    assert args.device == TrainingConfig().device and args.seed == TrainingConfig().seed
    assert args.patch_size is None and args.lr is None  # not given: the config (or the resumed model) decides
