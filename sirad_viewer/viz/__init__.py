"""VTK/pyvista scene building, testable off-screen. No Qt."""
