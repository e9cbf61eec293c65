"""User-facing errors."""


class DivNoisingError(ValueError):
    """A problem with the user's input or settings, with a message meant for the user.

    The command line prints it as one line and exits non-zero; the widgets show
    it as a napari notification. Messages say what is wrong and what to do.
    """
