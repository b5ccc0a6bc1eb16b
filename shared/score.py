"""The 0-100 score of the seed, calibrated so that it states the false-accept rate.

score = 40 - 10 * log10(FAR), where FAR is the share of different-person comparisons at least as
close as this one: 70 <=> FAR 1/1,000 and 80 <=> 1/10,000 (as the seed says), 90 <=> 1/100,000.
The map from cosine distance to score is a monotone table fitted on LFW folds 1-7 with this
project's engine by `scripts/calibrate_score.py`, stored in `shared/calibration.json`. Each
optional model (docs/models.md) has its own table, `shared/calibration-<model>.json`: pass
`model=` to read it (None or dlib's model name: dlib's table).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
DLIB_MODELS = (None, "dlib", "dlib_face_recognition_resnet_model_v1")


def calibration_file(model: str | None = None) -> Path:
    """The calibration table of `model` (dlib's when None)."""
    if model in DLIB_MODELS:
        return CALIBRATION_FILE
    if not model.replace("_", "").isalnum():
        raise ValueError(f"bad model name {model!r}")
    return CALIBRATION_FILE.with_name(f"calibration-{model}.json")


@lru_cache(maxsize=4)
def calibration(model: str | None = None) -> dict[str, Any]:
    data = json.loads(calibration_file(model).read_text(encoding="utf-8"))
    knots = np.asarray(data["knots"], dtype=np.float64)  # rows: cosine distance, score
    if np.any(np.diff(knots[:, 0]) <= 0) or np.any(np.diff(knots[:, 1]) > 0):
        raise ValueError("calibration knots must rise in distance and fall in score")
    data["_d"], data["_s"] = knots[:, 0], knots[:, 1]
    return data


def score_from_distance(distance: float, model: str | None = None) -> float:
    """Score 0-100 of a cosine distance (0 = identical direction, 2 = opposite)."""
    cal = calibration(model)
    return float(np.clip(np.interp(distance, cal["_d"], cal["_s"]), 0.0, 100.0))


def far_from_distance(distance: float, model: str | None = None) -> float:
    """False-accept rate per comparison at this distance, also beyond the score's ceiling.

    Up to score 100 (FAR 1e-6, the rarest rate LFW's 40 M impostor pairs measure) it is the
    score's definition. Closer than that, the log-FAR tail is extended linearly in distance
    with the slope of its last measured decade (scores 90 -> 100), so that a library of more
    than 10,000 faces can still tell a near-identical face from a merely close one.
    """
    cal = calibration(model)
    d, sc = cal["_d"], cal["_s"]
    d100 = float(d[sc >= 100.0].max())
    if distance >= d100:
        return far_from_score(score_from_distance(distance, model))
    d90 = float(np.interp(90.0, sc[::-1], d[::-1]))
    decades = (d100 - distance) / max(d90 - d100, 1e-9)
    return 1e-6 * 10.0 ** (-decades)


def _gallery_rate(far: float, gallery_faces: int) -> float:
    """Chance that at least one of `gallery_faces` comparisons, each a false accept with
    probability `far`, is one: 1 - (1 - far)^N, computed stably for tiny far."""
    if gallery_faces <= 0:
        return 0.0
    return -math.expm1(gallery_faces * math.log1p(-far)) if far < 1 else 1.0


def false_match_rate(distance: float, gallery_faces: int, model: str | None = None) -> float:
    """Chance that a stranger comes at least this close to some face of a gallery of N."""
    return _gallery_rate(far_from_distance(distance, model), gallery_faces)


def far_from_score(score: float) -> float:
    """False-accept rate per comparison at this score (the score's definition)."""
    return min(1.0, 10 ** ((40.0 - score) / 10.0))


def gallery_false_match_rate(score: float, gallery_faces: int) -> float:
    """Chance that a stranger scores at least `score` against some face of a gallery of N."""
    return _gallery_rate(far_from_score(score), gallery_faces)


def format_score(score: float) -> str:
    """The seed sends the score as a string; we send it with one decimal, e.g. "82.4"."""
    return f"{score:.1f}"
