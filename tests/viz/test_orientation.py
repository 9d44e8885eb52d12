"""The 3D orientation marker: a cube with the six patient directions on the right faces (LPS)."""
from __future__ import annotations

from sirad_viewer.viz.orientation import orientation_cube


def test_cube_faces_name_the_patient_directions_in_lps():
    c = orientation_cube()
    faces = (c.GetXPlusFaceText(), c.GetXMinusFaceText(), c.GetYPlusFaceText(), c.GetYMinusFaceText(),
             c.GetZPlusFaceText(), c.GetZMinusFaceText())
    assert faces == ("L", "R", "P", "A", "S", "I")
