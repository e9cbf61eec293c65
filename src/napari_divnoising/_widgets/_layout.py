"""The panels' outer layout: contents in a scroll area, so a panel never forces the window taller than the screen."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: The most a panel asks for at least (pixels); more content scrolls. Three panels stacked fit a 1080p screen.
MIN_PANEL_HEIGHT = 240


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


def content_height(panel: Any) -> int:
    """The height the panel's contents would need without scrolling (for tests and sizing)."""
    scroll = panel.findChild(QScrollArea)
    return scroll.widget().sizeHint().height() if scroll is not None else panel.sizeHint().height()
