"""Face detection and alignment before embedding (what a face recogniser such as FaceNet expects).

``haar``: OpenCV's frontal-face Haar cascade finds the largest face, its eye cascade the two eyes in the
face's upper half; the image is rotated and scaled about the eyes so that they sit level at fixed places of a
square crop (a similarity transform, as MTCNN-style aligners do), else the face box with a margin is cropped
(``aligned`` false). The cascades ship inside ``opencv-python-headless`` (< 5; the 5.x wheels dropped them):
it works offline. ``none``: no detection (the whole image is embedded), to be chosen explicitly.

An image where no face is found gives no crop: the audit never flags such a sample and leaves such training
and reference images out, and says how many there were.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from splitinv.errors import SplitinvError

DETECTORS = ("haar", "none")
# where the eyes sit in the aligned square crop (fractions of its side): level, 0.3 apart, 0.4 from the top
EYE_Y, EYE_DX = 0.4, 0.3
DETECT_SIDE = 256  # smaller images are upscaled to this short side before detection (GAN samples are small)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise SplitinvError(
            "face detection needs OpenCV: pip install 'opencv-python-headless<5' (or splitinv[audit]), "
            "or pass --faces none."
        ) from None
    return cv2


class FaceAligner:
    """Detects the largest frontal face in each image and returns it as an aligned ``size`` x ``size`` crop.

    ``margin``: the face box is widened by this fraction on each side when no eyes are found.
    """

    detector = "haar"

    def __init__(self, size: int = 160, margin: float = 0.2, min_neighbors: int = 5) -> None:
        cv2 = _cv2()
        root = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not root:
            raise SplitinvError(
                f"this OpenCV ({cv2.__version__}) ships no Haar cascades (cv2.data.haarcascades): install "
                "opencv-python-headless<5, whose wheels include them."
            )
        self.face = cv2.CascadeClassifier(root + "haarcascade_frontalface_default.xml")
        self.eyes = cv2.CascadeClassifier(root + "haarcascade_eye.xml")
        if self.face.empty() or self.eyes.empty():
            raise SplitinvError(f"OpenCV's Haar cascades in {root} could not be read: reinstall OpenCV.")
        self.size, self.margin, self.min_neighbors = int(size), float(margin), int(min_neighbors)

    def detect(self, image: np.ndarray) -> tuple[tuple[int, int, int, int] | None, np.ndarray | None]:
        """The largest face box (x, y, w, h) in an RGB uint8 image, and its two eye centres (left first), or
        None where none is found."""
        cv2 = _cv2()
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = min(gray.shape)
        faces = self.face.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(side // 8, side // 8)
        )
        if len(faces) == 0:
            return None, None
        x, y, w, h = (int(v) for v in max(faces, key=lambda f: f[2] * f[3]))
        upper = gray[y : y + h * 6 // 10, x : x + w]
        eyes = self.eyes.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=5, minSize=(w // 10, w // 10))
        centres = sorted(((x + ex + ew / 2, y + ey + eh / 2) for ex, ey, ew, eh in eyes), key=lambda c: c[0])
        # two eyes: the leftmost one in each half of the face
        left = [c for c in centres if c[0] < x + w / 2]
        right = [c for c in centres if c[0] >= x + w / 2]
        if not left or not right:
            return (x, y, w, h), None
        return (x, y, w, h), np.array([left[0], right[-1]], dtype=np.float64)

    def align_one(self, image: Tensor) -> tuple[Tensor | None, bool]:
        """One (C, H, W) image in [0, 1] -> its aligned face crop (3, size, size) and whether the eyes
        aligned it; (None, False) without a face."""
        cv2 = _cv2()
        rgb = image[:3].expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        array = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        scale = max(1.0, DETECT_SIDE / min(array.shape[:2]))
        if scale > 1:
            size = (round(array.shape[1] * scale), round(array.shape[0] * scale))
            array = cv2.resize(array, size, interpolation=cv2.INTER_CUBIC)
        box, eyes = self.detect(array)
        if box is None:
            return None, False
        if eyes is not None:
            (lx, ly), (rx, ry) = eyes
            angle = math.degrees(math.atan2(ry - ly, rx - lx))
            zoom = EYE_DX * self.size / max(math.hypot(rx - lx, ry - ly), 1e-6)
            matrix = cv2.getRotationMatrix2D(((lx + rx) / 2, (ly + ry) / 2), angle, zoom)
            matrix[0, 2] += self.size / 2 - (lx + rx) / 2
            matrix[1, 2] += EYE_Y * self.size - (ly + ry) / 2
            crop = cv2.warpAffine(array, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR)
        else:
            x, y, w, h = box
            pad = round(self.margin * max(w, h))
            x0, y0 = max(0, x - pad), max(0, y - pad)
            x1, y1 = min(array.shape[1], x + w + pad), min(array.shape[0], y + h + pad)
            crop = cv2.resize(array[y0:y1, x0:x1], (self.size, self.size), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(crop).permute(2, 0, 1).float().div(255), eyes is not None

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C, H, W) in [0, 1] -> crops (B, 3, size, size) (zeros where no face), found (B,) and aligned
        (B,) booleans."""
        crops = torch.zeros(images.shape[0], 3, self.size, self.size)
        found = torch.zeros(images.shape[0], dtype=torch.bool)
        aligned = torch.zeros(images.shape[0], dtype=torch.bool)
        for i, image in enumerate(images.detach().float().cpu()):
            crop, by_eyes = self.align_one(image)
            if crop is not None:
                crops[i], found[i], aligned[i] = crop, True, by_eyes
        return crops, found, aligned

    def describe(self) -> dict[str, Any]:
        return {"detector": self.detector, "size": self.size, "eye_y": EYE_Y, "eye_distance": EYE_DX}


def build_aligner(detector: str, size: int = 160) -> FaceAligner | None:
    """A face aligner by name (``haar``), or None for ``none`` (whole images are embedded)."""
    if detector not in DETECTORS:
        raise SplitinvError(f"unknown face detector {detector!r}: use one of {', '.join(DETECTORS)}.")
    return None if detector == "none" else FaceAligner(size=size)
