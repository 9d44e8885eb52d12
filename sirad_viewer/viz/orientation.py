"""The 3D view's orientation marker: a cube labelled with patient directions (Qt-free).

Faces: L / R on +x / -x, P / A on +y / -y, S / I on +z / -z (LPS), the way Slicer and most PACS
viewers label theirs. Letters on the faces stay readable in a small panel where the labels of
a three-arrow axes glyph shrink to nothing.
"""
from __future__ import annotations

FACES = {"x+": "L", "x-": "R", "y+": "P", "y-": "A", "z+": "S", "z-": "I"}


def orientation_cube():
    """A ``vtkAnnotatedCubeActor`` with the LPS face letters, grey faces and light letters."""
    import vtk

    cube = vtk.vtkAnnotatedCubeActor()
    cube.SetXPlusFaceText(FACES["x+"])
    cube.SetXMinusFaceText(FACES["x-"])
    cube.SetYPlusFaceText(FACES["y+"])
    cube.SetYMinusFaceText(FACES["y-"])
    cube.SetZPlusFaceText(FACES["z+"])
    cube.SetZMinusFaceText(FACES["z-"])
    cube.SetFaceTextScale(0.6)
    cube.GetCubeProperty().SetColor(0.30, 0.34, 0.40)
    cube.GetTextEdgesProperty().SetColor(0.9, 0.9, 0.9)
    cube.GetTextEdgesProperty().SetLineWidth(1.5)
    for prop in (cube.GetXPlusFaceProperty(), cube.GetXMinusFaceProperty()):
        prop.SetColor(1.0, 0.55, 0.45)
    for prop in (cube.GetYPlusFaceProperty(), cube.GetYMinusFaceProperty()):
        prop.SetColor(0.55, 0.9, 0.55)
    for prop in (cube.GetZPlusFaceProperty(), cube.GetZMinusFaceProperty()):
        prop.SetColor(0.55, 0.75, 1.0)
    return cube
