"""Suite-wide test configuration."""

import gc


def pytest_collection_finish(session):
    # Everything imported while collecting (torch, napari, the package) lives for the whole run. Moving
    # it out of the collector's reach makes every later full collection (napari runs one whenever a
    # viewer drops its layers) scan only the objects the tests create.
    gc.collect()
    gc.freeze()
