"""Editors for a config dataclass's fields, generated from the field metadata.

Each field of e.g. :class:`~napari_divnoising.training.TrainingConfig` carries its default,
range, label and help text; the panel takes all of them from there (see
``training/config.py``), so they are written once. Optional numbers (default ``None``) show
"auto" (or "auto (device)") at the bottom of their spin box and read back as ``None``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from ..training.config import DEVICE_CHOSEN

#: Spin-box steps where 1 is not useful.
SINGLE_STEPS = {"patch_size": 16}
#: The largest number a spin box offers (Qt's int spin boxes are 32-bit).
_MAX_INT = 2**31 - 1


def auto_text(name: str) -> str:
    """What an empty (None) value of field ``name`` is shown as."""
    return "auto (device)" if name in DEVICE_CHOSEN else "auto"


def _field_type(config_cls: type, name: str) -> tuple[type, bool]:
    """The base type of field ``name`` (int, float, bool or str) and whether it may be None."""
    hint = typing.get_type_hints(config_cls)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = [a for a in args if a is not type(None)]
        return base[0], type(None) in args
    return hint, False


def _decimals(meta: dict[str, Any], default: Any) -> int:
    """Enough decimals to show the smallest positive number among the range and the default, and the
    maximum exactly (0.99999 would otherwise be rounded up to 1)."""
    values = [abs(float(v)) for v in (meta.get("min"), default) if isinstance(v, (int, float)) and v]
    smallest = min(values, default=1.0)
    decimals = int(min(10, max(2, math.ceil(-math.log10(smallest)) + 2))) if smallest < 1 else 2
    high = meta.get("max")
    while isinstance(high, float) and decimals < 10 and round(high, decimals) != high:
        decimals += 1
    return decimals


class _Editor:
    """One field's editor widget and how to read and set its value."""

    def __init__(self, config_cls: type, field: dataclasses.Field) -> None:
        self.name = field.name
        self.meta = dict(field.metadata)
        self.default = field.default
        self.base, self.optional = _field_type(config_cls, field.name)
        self.label = self.meta.get("label") or field.name.replace("_", " ")
        lo, hi = self.meta.get("min"), self.meta.get("max")
        if self.base is bool:
            self.widget: Any = QCheckBox()
        elif self.base is str and "choices" in self.meta:
            self.widget = QComboBox()
            if self.optional:  # an empty value is "auto", the first entry
                self.widget.addItem(auto_text(self.name))
            self.widget.addItems(list(self.meta["choices"]))
            self.widget.setEditable(not self.optional)  # e.g. cuda:1
        elif self.base is str:
            self.widget = QLineEdit()
        elif self.base is int:
            self.widget = QSpinBox()
            lo = int(lo if lo is not None else 0)
            hi = int(min(hi if hi is not None else _MAX_INT, _MAX_INT))
            self.sentinel = 0 if self.optional and lo > 0 else lo - 1
            self.widget.setRange(self.sentinel if self.optional else lo, hi)
            self.widget.setSingleStep(SINGLE_STEPS.get(self.name, 1))
        else:
            self.widget = QDoubleSpinBox()
            self.widget.setDecimals(_decimals(self.meta, self.default))
            lo = float(lo if lo is not None else 0.0)
            hi = float(hi if hi is not None else 1e9)
            self.sentinel = lo - 1.0
            self.widget.setRange(self.sentinel if self.optional else lo, hi)
            step = 10 ** -(self.widget.decimals() - 2) if lo < 1 else 1.0
            self.widget.setSingleStep(step)
        if self.optional and not isinstance(self.widget, QComboBox):
            self.widget.setSpecialValueText(auto_text(self.name))
        self.widget.setToolTip(self.meta.get("help", ""))
        self.set(self.default)

    def get(self) -> Any:
        w = self.widget
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QComboBox):
            if self.optional and w.currentIndex() == 0:
                return None
            return w.currentText().strip()
        if isinstance(w, QLineEdit):
            return w.text().strip()
        value = w.value()
        if self.optional and value == self.sentinel:
            return None
        return int(value) if self.base is int else float(value)

    def set(self, value: Any) -> None:
        w = self.widget
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QComboBox):
            w.setCurrentText(auto_text(self.name) if value is None else str(value))
        elif isinstance(w, QLineEdit):
            w.setText(str(value))
        else:
            w.setValue(self.sentinel if value is None else value)


class ConfigForm:
    """Editors for the fields ``names`` of the dataclass ``config_cls``, laid out in a form.

    ``form.editors[name].widget`` is the Qt editor; :meth:`values` reads them all by field name.
    """

    def __init__(self, config_cls: type, names: list[str], parent: QWidget | None = None) -> None:
        self.widget = QWidget(parent)
        self.layout = QFormLayout(self.widget)
        self.layout.setContentsMargins(0, 0, 0, 0)
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        self.editors: dict[str, _Editor] = {}
        for name in names:
            editor = _Editor(config_cls, fields[name])
            self.editors[name] = editor
            self.layout.addRow(editor.label, editor.widget)

    def values(self) -> dict[str, Any]:
        """Every field's value by name (``None`` for "auto")."""
        return {name: editor.get() for name, editor in self.editors.items()}

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            self.editors[name].set(value)
