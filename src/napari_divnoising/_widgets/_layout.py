"""The panels' outer layout: contents in a scroll area, so a panel never forces the window taller than the screen,
and contents that shrink to a narrow dock instead of being clipped at its right edge."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

#: The most a panel asks for at least (pixels); more content scrolls. Three panels stacked fit a 1080p screen.
MIN_PANEL_HEIGHT = 240
#: The most a panel's contents ask for at least (pixels), so a dock narrower than napari's default still shows
#: every label and button whole (the horizontal scroll bar is off: anything wider would be cut off).
MIN_CONTENT_WIDTH = 320
#: Characters a combo box shows at least when the dock is narrow (its popup always shows whole items).
COMBO_MIN_CHARS = 10
#: Width (pixels) a spin box may shrink to; a longer value scrolls inside instead of widening the whole panel.
SPIN_MIN_WIDTH = 100


def scrollable_layout(panel: QWidget) -> QVBoxLayout:
    """Give ``panel`` a vertical scroll area and return the layout to put its contents in."""
    outer = QVBoxLayout(panel)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea(panel)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMinimumHeight(MIN_PANEL_HEIGHT)
    contents = QWidget(scroll)
    scroll.setWidget(contents)
    outer.addWidget(scroll)
    layout = QVBoxLayout(contents)
    layout.setContentsMargins(6, 6, 6, 6)
    return layout


def fit_to_width(panel: QWidget) -> None:
    """Let the contents of ``panel`` shrink to a narrow dock instead of widening it past the viewport.

    Call it at the end of the panel's constructor. Labels wrap; combo boxes (layer pickers included,
    whose items change later) stop asking for the width of their longest item; spin boxes stop asking
    for the width of their largest allowed value (a range up to 1e30 otherwise asks for 200 pixels).
    Each widget still grows to the dock's width when there is room.
    """
    for label in panel.findChildren(QLabel):
        label.setWordWrap(True)
    for combo in panel.findChildren(QComboBox):
        longest = max((len(combo.itemText(i)) for i in range(combo.count())), default=COMBO_MIN_CHARS)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(min(longest, COMBO_MIN_CHARS))
    for spin in panel.findChildren(QAbstractSpinBox):
        spin.setMinimumWidth(min(spin.minimumSizeHint().width(), SPIN_MIN_WIDTH))


def content_width(panel: Any) -> int:
    """The least width the panel's contents need without being cut off (for tests and sizing)."""
    scroll = panel.findChild(QScrollArea)
    return scroll.widget().minimumSizeHint().width() if scroll is not None else panel.minimumSizeHint().width()


def content_height(panel: Any) -> int:
    """The height the panel's contents would need without scrolling (for tests and sizing)."""
    scroll = panel.findChild(QScrollArea)
    return scroll.widget().sizeHint().height() if scroll is not None else panel.sizeHint().height()
