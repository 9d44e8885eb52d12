"""Per-case nuisances for atlas phantoms, drawn independently of the grade, and scanner physics.

:func:`draw_nuisance` draws everything that is not anatomy or disease from its own random
stream (seeded by the case seed and the site only, never by the grades): bone density, the
reconstruction kernel as real sharpness (Gaussian blur and edge enhancement), pixel size and
slice geometry, noise level and texture, dose, pose, field of view, contrast, metal and table
position. Sites (:data:`ATLAS_SITES`) differ as scanners do: kernel, dose, resolution and slice
thickness.

:func:`apply_kernel`, :func:`fbp_noise` and :func:`metal_streaks` turn an ideal HU volume into
what a scanner would show.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Scanner-like profiles. Ranges are (low, high) for a uniform draw.
ATLAS_SITES: dict[str, dict[str, Any]] = {
    # thin-slice bone protocol, sharp kernel with edge enhancement, standard dose
    "atlas-A": {"pixel": (0.5, 0.8), "thickness": (0.6, 1.25), "blur_fwhm": (0.0, 0.6), "sharpen": (0.4, 1.0),
                "noise": (12.0, 25.0), "dose": (0.8, 1.2), "kernel": "BONE SHARP"},
    # routine abdomen-pelvis: soft kernel, thick slices, larger pixels
    "atlas-B": {"pixel": (0.75, 1.0), "thickness": (2.0, 3.0), "blur_fwhm": (1.1, 2.0), "sharpen": (0.0, 0.15),
                "noise": (6.0, 14.0), "dose": (0.9, 1.3), "kernel": "STANDARD"},
    # low-dose protocol: medium kernel, mid slices, high noise
    "atlas-C": {"pixel": (0.6, 0.9), "thickness": (1.0, 2.0), "blur_fwhm": (0.5, 1.2), "sharpen": (0.1, 0.5),
                "noise": (25.0, 45.0), "dose": (0.3, 0.6), "kernel": "BONE LOW DOSE"},
    # any scanner: the whole range (for training)
    "atlas-mixed": {"pixel": (0.5, 1.0), "thickness": (0.6, 3.0), "blur_fwhm": (0.0, 2.0), "sharpen": (0.0, 1.0),
                    "noise": (6.0, 45.0), "dose": (0.3, 1.3), "kernel": "MIXED"},
}

COVERAGES = ("abdomen-pelvis", "pelvis", "sij")


@dataclass
class Nuisance:
    """Everything about a case that is neither anatomy nor disease."""

    site: str
    kernel: str
    pixel_mm: float
    slice_thickness_mm: float
    slice_spacing_mm: float
    blur_fwhm_mm: float
    sharpen: float  # unsharp-mask amount (edge enhancement of a sharp kernel)
    noise_hu: float  # noise SD at dose 1, 1 mm slices
    dose: float
    bone_density: float  # -1 osteopenic .. +1 dense
    rotation_deg: tuple[float, float, float]
    table_offset_mm: tuple[float, float, float]
    coverage: str  # abdomen-pelvis | pelvis | sij
    fov_mm: float
    contrast: str  # none | arterial | venous
    metal: str  # none | hip-left | hip-right | hip-both | screws
    hu_offset: float

    @property
    def effective_noise_hu(self) -> float:
        """Noise SD after dose and slice thickness (SD ~ 1 / sqrt(dose * thickness))."""
        return float(self.noise_hu / np.sqrt(self.dose * max(self.slice_thickness_mm, 0.3)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def draw_nuisance(seed: int, site: str = "atlas-mixed", **overrides: Any) -> Nuisance:
    """Draw the nuisances of case ``seed`` at ``site``; keyword arguments fix single values.

    The random stream depends on the seed and the site only, so two cases that differ only in
    their grades get the same nuisances.
    """
    if site not in ATLAS_SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {sorted(ATLAS_SITES)}")
    p = ATLAS_SITES[site]
    rng = np.random.default_rng([int(seed), zlib.crc32(site.encode()), 0xA715])
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    thickness = u(p["thickness"])
    spacing = float(np.clip(thickness * rng.choice([0.5, 0.8, 1.0, 1.0]), 0.5, 3.0))
    coverage = str(rng.choice(COVERAGES, p=[0.4, 0.35, 0.25]))
    fov = {"abdomen-pelvis": (340.0, 440.0), "pelvis": (280.0, 360.0), "sij": (160.0, 200.0)}[coverage]
    metal = str(rng.choice(["none", "hip-left", "hip-right", "hip-both", "screws"],
                           p=[0.86, 0.04, 0.04, 0.02, 0.04]))
    contrast = str(rng.choice(["none", "arterial", "venous"], p=[0.5, 0.2, 0.3]))
    n = Nuisance(
        site=site, kernel=p["kernel"], pixel_mm=u(p["pixel"]), slice_thickness_mm=thickness,
        slice_spacing_mm=spacing, blur_fwhm_mm=u(p["blur_fwhm"]), sharpen=u(p["sharpen"]),
        noise_hu=u(p["noise"]), dose=u(p["dose"]), bone_density=float(rng.uniform(-1.0, 1.0)),
        rotation_deg=tuple(float(v) for v in rng.uniform(-15.0, 15.0, size=3)),  # type: ignore[arg-type]
        table_offset_mm=(float(rng.uniform(-25, 25)), float(rng.uniform(-30, 20)), float(rng.uniform(-30, 30))),
        coverage=coverage, fov_mm=float(rng.uniform(*fov)), contrast=contrast, metal=metal,
        hu_offset=float(rng.normal(0.0, 8.0)),
    )
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(n, k):
            raise ValueError(f"unknown nuisance {k!r}")
        setattr(n, k, tuple(v) if isinstance(v, list) else v)
    _validate(n)
    return n


def _validate(n: Nuisance) -> None:
    if not 0.2 <= n.pixel_mm <= 5.0:
        raise ValueError(f"pixel size must be 0.2-5 mm, got {n.pixel_mm}")
    if not 0.3 <= n.slice_thickness_mm <= 10 or not 0.3 <= n.slice_spacing_mm <= 10:
        raise ValueError("slice thickness and spacing must be between 0.3 and 10 mm")
    if n.coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {COVERAGES}, got {n.coverage!r}")
    if n.metal not in ("none", "hip-left", "hip-right", "hip-both", "screws"):
        raise ValueError(f"unknown metal {n.metal!r}")
    if n.contrast not in ("none", "arterial", "venous"):
        raise ValueError(f"unknown contrast {n.contrast!r}")
    if any(abs(a) > 45 for a in n.rotation_deg):
        raise ValueError(f"rotations above 45 degrees are not a pose: {n.rotation_deg}")


# ---------------------------------------------------------------------------------------------
# Scanner physics (on the output grid: axis 0 slices, axes 1-2 in plane)
# ---------------------------------------------------------------------------------------------

def apply_kernel(hu: np.ndarray, pixel_mm: float, blur_fwhm_mm: float, sharpen: float) -> np.ndarray:
    """In-plane reconstruction kernel: Gaussian blur (FWHM) then unsharp-mask edge enhancement."""
    from scipy import ndimage

    out = hu
    sig = blur_fwhm_mm / 2.3548 / pixel_mm
    if sig > 0.05:
        out = ndimage.gaussian_filter(out, sigma=(0.0, sig, sig))
    if sharpen > 0.01:
        s2 = 0.9 / pixel_mm
        out = out + sharpen * (out - ndimage.gaussian_filter(out, sigma=(0.0, s2, s2)))
    return out.astype(np.float32, copy=False)


def fbp_noise(shape: tuple[int, int, int], pixel_mm: float, sd: float, blur_fwhm_mm: float, sharpen: float,
              rng: np.random.Generator) -> np.ndarray:
    """Noise with the texture filtered back-projection gives: NPS ~ |f| times the kernel's response squared.

    A ramp filter applied to white noise, windowed by the same Gaussian blur and unsharp mask as
    the image, normalised to standard deviation ``sd``.
    """
    ny, nx = shape[1], shape[2]
    fy = np.fft.fftfreq(ny, d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(nx, d=pixel_mm)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)  # cycles/mm
    sig = max(blur_fwhm_mm, 0.35) / 2.3548  # a scanner never resolves beyond ~0.35 mm
    g = np.exp(-2 * (np.pi * f * sig) ** 2)
    s2 = 0.9
    w = g * (1.0 + sharpen * (1.0 - np.exp(-2 * (np.pi * f * s2) ** 2)))
    filt = (np.sqrt(f) * w).astype(np.float32)
    white = rng.standard_normal(shape, dtype=np.float32)
    from scipy import fft

    out = fft.irfft2(fft.rfft2(white, axes=(1, 2), workers=-1) * filt, s=(ny, nx), axes=(1, 2),
                     workers=-1).astype(np.float32, copy=False)
    out *= sd / max(float(out.std()), 1e-6)
    return out


def metal_streaks(hu: np.ndarray, metal: np.ndarray, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Streaks radiating from metal and a dark band between metal objects, slice by slice.

    A cheap stand-in for beam hardening and photon starvation (real metal artefact needs a
    projector; this keeps the look: alternating bright and dark rays fading with distance).
    """
    from scipy import ndimage

    out = hu
    ny, nx = hu.shape[1:]
    jj, ii = np.mgrid[0:ny, 0:nx].astype(np.float32)
    angles = rng.uniform(0, np.pi, size=14)
    amps = rng.uniform(-350, 250, size=14)
    for k in np.nonzero(metal.reshape(len(metal), -1).any(axis=1))[0]:
        lab, n = ndimage.label(metal[k])
        if n == 0:
            continue
        cents = ndimage.center_of_mass(metal[k], lab, range(1, n + 1))
        sizes = ndimage.sum(metal[k], lab, range(1, n + 1))
        add = np.zeros((ny, nx), np.float32)
        for (cy, cx), sz in zip(cents, sizes):
            if sz < 3:
                continue
            dy, dx = jj - cy, ii - cx
            r = np.sqrt(dx * dx + dy * dy) * pixel_mm + 1.0
            th = np.arctan2(dy, dx)
            strength = min(1.0, np.sqrt(sz) * pixel_mm / 20.0)
            for a, amp in zip(angles, amps):
                d = np.abs(np.sin(th - a)) * r  # distance from the ray through the centre (mm)
                add += amp * strength * np.exp(-(d / 1.2) ** 2) * np.exp(-r / 90.0)
        big = [c for c, s in zip(cents, sizes) if s * pixel_mm ** 2 > 150]
        for a_i in range(len(big)):
            for b_i in range(a_i + 1, len(big)):
                (y0, x0), (y1, x1) = big[a_i], big[b_i]
                v = np.array([y1 - y0, x1 - x0])
                L = np.linalg.norm(v) + 1e-6
                v /= L
                t = ((jj - y0) * v[0] + (ii - x0) * v[1]) / L
                d = np.abs((jj - y0) * v[1] - (ii - x0) * v[0]) * pixel_mm
                add += -300.0 * np.exp(-(d / 6.0) ** 2) * ((t > 0) & (t < 1))
        out[k] += add
    return out
