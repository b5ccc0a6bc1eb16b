"""Quality measures of one detected face: how far it leaves the frame, its pose, its blur.

Each is a plain function of numbers the engine already has (the detector box, the 5 landmarks,
the aligned 150x150 chip), so computing them costs well under a millisecond. The thresholds
that turn them into errcodes live in `EngineConfig`; how they were measured is in docs/engine.md.

Which of them a request applies is its `qualityControl` level (`config.gates_for`):
NONE none; LOW out of frame and size; NORMAL also pose and blur (registration's default; LOW is
recognition's); HIGH the four with stricter thresholds (face 1.25x the minimum, 5% out of
frame, pose 0.50, blur 0.60). What each level costs on LFW: docs/engine.md.
"""

from __future__ import annotations

import numpy as np

# dlib's 5-point model: points 0,1 are the outer and inner corners of one eye, 2,3 those of the
# other eye, 4 the base of the nose.
_EYE_A = slice(0, 2)
_EYE_B = slice(2, 4)
_NOSE = 4

# The blur score looks at the middle of the chip: the face itself, without the padding's
# background and hair, whose texture (or lack of it) says nothing about focus.
_CORE = slice(30, 120)
_BLUR_TAPS = 9  # length of the re-blurring filter (Crete et al. 2007)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def out_of_frame(box: tuple[float, float, float, float], width: int, height: int) -> float:
    """How far the box (left, top, right, bottom) sticks out of the image, as a share of its width.

    0 when the box is inside; 0.25 when a quarter of the face is beyond the nearest border.
    """
    left, top, right, bottom = box
    size = max(right - left, 1.0)
    overhang = max(0.0, -left, -top, right - width, bottom - height)
    return float(overhang / size)


def yaw_score(landmarks: np.ndarray) -> float:
    """How far the head is turned sideways, from the 5 landmarks: 0 frontal, 1 nose at an eye.

    Projects the base of the nose onto the line between the eye centres: a frontal face puts it
    half-way; turning the head moves it towards one eye. Roll does not change the score
    (alignment removes roll anyway); pitch changes it little.
    """
    eye_a = landmarks[_EYE_A].mean(axis=0)
    eye_b = landmarks[_EYE_B].mean(axis=0)
    axis = eye_b - eye_a
    length2 = float(axis @ axis)
    if length2 < 1e-6:
        return 1.0
    t = float((landmarks[_NOSE] - eye_a) @ axis) / length2
    return float(abs(t - 0.5) * 2.0)


def blur_score(chip: np.ndarray) -> float:
    """No-reference blur of the aligned chip (Crete et al. 2007): 0 sharp .. 1 featureless.

    Blurs the face again and measures how much of its neighbouring-pixel variation survives: a
    sharp face loses much of it, an already blurred one little. It is a ratio, so it does not
    depend on contrast or lighting the way the variance of the Laplacian does; and it is
    measured on the chip, so it judges detail at the scale the embedding network sees.
    """
    gray = chip[_CORE, _CORE].astype(np.float32) @ _LUMA
    kernel = np.full(_BLUR_TAPS, 1.0 / _BLUR_TAPS, dtype=np.float32)
    scores = []
    for axis in (0, 1):
        blurred = np.apply_along_axis(np.convolve, axis, gray, kernel, mode="same")
        d_sharp = np.abs(np.diff(gray, axis=axis))
        d_blur = np.abs(np.diff(blurred, axis=axis))
        # Ignore the borders, where the "same"-mode convolution pads with zeros.
        inner = (slice(_BLUR_TAPS, -_BLUR_TAPS), slice(_BLUR_TAPS, -_BLUR_TAPS))
        d_sharp, d_blur = d_sharp[inner], d_blur[inner]
        total = float(d_sharp.sum())
        if total <= 1e-6:
            return 1.0
        lost = float(np.maximum(d_sharp - d_blur, 0.0).sum())
        scores.append((total - lost) / total)
    return float(max(scores))
