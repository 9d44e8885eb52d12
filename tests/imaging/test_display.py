import numpy as np

from sirad_viewer.imaging.display import apply_window


def test_window_lut_matches_the_dicom_linear_function_for_int_and_float():
    hu = np.array([-1024, -500, 0, 499, 500, 1000, 1499, 1500, 3000], dtype=np.int16)
    grey_int = apply_window(hu, 2000, 500)
    grey_float = apply_window(hu.astype(np.float32), 2000, 500)
    assert np.array_equal(grey_int, grey_float)
    assert grey_int[0] == 0 and grey_int[-1] == 255
    assert abs(int(grey_int[4]) - 128) <= 1  # level maps to mid grey
