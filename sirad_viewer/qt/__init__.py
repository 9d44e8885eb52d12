"""The only package that imports Qt: windows, views, panels, workers."""
