"""napari dock widgets (Qt): Noise model, Train and Predict. They drive the Qt-free core in thread workers."""
