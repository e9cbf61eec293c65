"""Command-line options generated from a config dataclass's field metadata.

Each option's type, help text and shown default come from the field (see
``training/config.py``), so ``--help`` says what the Train panel's tooltips say.
Options default to ``None`` ("not given"), except those named in ``keep_defaults``,
so a command can tell a given value from the default (e.g. when resuming).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import SettingError

#: Namespace attribute with the flag of each setting a command offers ({"learning_rate": "--lr", ...}).
SETTING_FLAGS = "setting_flags"


def _base_type(config_cls: type, name: str) -> type:
    hint = typing.get_type_hints(config_cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def default_text(field: dataclasses.Field) -> str:
    """The default of ``field`` in words, as the docs and ``--help`` show it."""
    value = field.default
    if value is None:
        return "auto" if "empty:" in field.metadata.get("help", "") else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def option_help(field: dataclasses.Field) -> str:
    """``--help`` text of ``field``: its help sentence and its default (escaped for argparse)."""
    text = field.metadata.get("help", "").replace("empty:", "not given:")
    if field.default is not None and "default" not in text:
        text = f"{text} (default {default_text(field)})"
    return text.replace("%", "%%")


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_cls: type,
    names: Iterable[str],
    *,
    flags: Mapping[str, str] | None = None,
    keep_defaults: Iterable[str] = (),
) -> None:
    """Add one option per field ``names`` of ``config_cls`` (``--patch-size`` for ``patch_size``).

    Parameters
    ----------
    parser
        The parser or argument group to add to.
    config_cls
        A dataclass whose fields carry ``help`` (and ``choices``) metadata.
    names
        The fields to expose, in this order.
    flags
        Other flag names for some fields (e.g. ``{"learning_rate": "--lr"}``); the argparse
        destination follows the flag (``args.lr``).
    keep_defaults
        Fields whose option defaults to the field's default instead of ``None``.

    The parsed arguments remember each field's flag, so that errors can name it (:func:`flag_named`).
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    flags = dict(flags or {})
    keep = set(keep_defaults)
    shown = dict(parser.get_default(SETTING_FLAGS) or {})
    for name in names:
        field = fields[name]  # an unknown name fails here, loudly
        base = _base_type(config_cls, name)
        flag = flags.get(name, "--" + name.replace("_", "-"))
        kwargs: dict[str, Any] = {"help": option_help(field), "default": field.default if name in keep else None}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
            if "choices" in field.metadata:
                kwargs["metavar"] = "|".join(field.metadata["choices"])
        parser.add_argument(flag, **kwargs)
        shown[name] = flag
    parser.set_defaults(**{SETTING_FLAGS: shown})


def flag_named(error: SettingError, args: argparse.Namespace) -> SettingError:
    """``error`` naming its setting by the command's flag (``--lr``, not ``learning_rate``) where it has one."""
    flag = getattr(args, SETTING_FLAGS, {}).get(error.setting)
    return error.called(flag) if flag else error


def settings_table(config_cls: type, names: Iterable[str]) -> str:
    """A Markdown table (setting, default, what it does) of the fields ``names``, as the user guide shows it."""
    from ..training.config import DEVICE_CHOSEN

    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    lines = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for name in names:
        field = fields[name]
        label = field.metadata.get("label") or name
        default = default_text(field)
        if default == "auto" and name in DEVICE_CHOSEN:
            default = "auto (device)"
        lines.append(f"| {label} | {default} | {field.metadata.get('help', '')} |")
    return "\n".join(lines)
