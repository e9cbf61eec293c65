"""The Train panel's settings are generated from TrainingConfig's field metadata."""

from __future__ import annotations

import dataclasses

import pytest

from napari_divnoising._widgets._core import make_training_config
from napari_divnoising._widgets.train_widget import BUDGET_FIELDS, TrainWidget
from napari_divnoising.training import TrainingConfig, field_metadata


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    w = TrainWidget(make_napari_viewer())
    qtbot.addWidget(w)
    return w


def test_untouched_panel_gives_the_config_defaults(panel):
    assert panel.training_config() == TrainingConfig()


def test_every_setting_has_an_editor_with_the_metadata_range_and_help(panel):
    editors = {**panel.main_settings.editors, **panel.advanced_settings.editors}
    names = [f.name for f in dataclasses.fields(TrainingConfig) if f.name not in BUDGET_FIELDS]
    assert sorted(editors) == sorted(names)
    for name in names:
        meta, editor = field_metadata(name), editors[name]
        assert editor.widget.toolTip() == meta["help"]
        assert (name in panel.advanced_settings.editors) == meta["advanced"]
        if "max" in meta and hasattr(editor.widget, "maximum"):
            highest = min(meta["max"], 2**31 - 1) if editor.base is int else meta["max"]
            assert editor.widget.maximum() == pytest.approx(highest)
            if not editor.optional:
                assert editor.widget.minimum() == pytest.approx(meta["min"])
    assert panel.patch_size.specialValueText() == "auto (device)"
    assert panel.budget_value.value() == TrainingConfig().max_minutes
    assert panel.budget_value.toolTip() == field_metadata("max_minutes")["help"]


def test_changed_settings_reach_the_config(panel):
    panel.patch_size.setValue(32)
    panel.learning_rate.setValue(0.0005)
    panel.stop_on_collapse.setChecked(False)
    panel.budget_unit.setCurrentText("steps")
    panel.budget_value.setValue(40)
    config = panel.training_config()
    assert config.patch_size == 32 and config.learning_rate == pytest.approx(0.0005)
    assert config.stop_on_collapse is False and config.max_steps == 40 and config.max_minutes is None
    panel.patch_size.setValue(0)  # back to "auto (device)"
    assert panel.training_config().patch_size is None


def test_network_choice_offers_the_devices_choice_and_both_networks(panel):
    combo = panel.advanced_settings.editors["network"].widget
    assert [combo.itemText(i) for i in range(combo.count())] == ["auto (device)", "divnoising", "hierarchical"]
    assert not combo.isEditable() and panel.training_config().network is None
    combo.setCurrentText("divnoising")
    assert panel.training_config().network == "divnoising"
    panel.advanced_settings.editors["network"].set(None)
    assert combo.currentIndex() == 0 and panel.training_config().network is None


def test_an_unknown_setting_fails_loudly():
    with pytest.raises(TypeError):
        make_training_config(learning_rat=0.1)
