"""User-facing errors."""

from __future__ import annotations


class DivNoisingError(ValueError):
    """A problem with the user's input or settings, with a message meant for the user.

    The command line prints it as one line and exits non-zero; the widgets show
    it as a napari notification. Messages say what is wrong and what to do.
    """


class SettingError(DivNoisingError):
    """A setting out of its range: ``setting`` (a config field's name) and what is wrong with its value.

    Views name the setting as their users know it, e.g. the command line's ``--lr`` for
    ``learning_rate`` (:meth:`called`).
    """

    def __init__(self, setting: str, problem: str, *, shown_as: str | None = None) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{shown_as or setting} {problem}")

    def called(self, name: str) -> SettingError:
        """The same error with the setting shown as ``name``."""
        return SettingError(self.setting, self.problem, shown_as=name)
