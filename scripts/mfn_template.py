"""Where dlib's five landmarks sit in the ArcFace 112x112 frame, on average over LFW folds 1-4.

For each sampled image: dlib's HOG detector, then both landmark predictors in the same box; the
similarity that brings the 68-point ArcFace points (eye centres, nose tip, mouth corners) onto
the ArcFace template is applied to the five points of dlib's 5-point predictor. The mean of
those is `DLIB5_TEMPLATE` in worker/engine/mobilefacenet.py: the template the "5" alignment
fits dlib's five points to.

    nice -n 10 uv run python scripts/mfn_template.py [--images 2000]
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dlib

from worker.engine.mobilefacenet import (  # noqa: E402
    ARCFACE_TEMPLATE,
    arcface_points_from_68,
    similarity_transform,
)
from worker.engine.models import shape_predictor_5_path, shape_predictor_68_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()

    paths = []
    with (args.lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if int(row["fold"]) <= 4:
                for k in range(1, int(row["images"]) + 1):
                    paths.append(args.lfw / "images" / row["name"] / f"{row['name']}_{k:04d}.jpg")
    rng = np.random.default_rng(args.seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), args.images, replace=False))]

    detector = dlib.get_frontal_face_detector()
    p5 = dlib.shape_predictor(shape_predictor_5_path())
    p68 = dlib.shape_predictor(shape_predictor_68_path())
    mapped = []
    for path in chosen:
        img = np.asarray(Image.open(path).convert("RGB"))
        dets = detector(img, 1)
        if not dets:
            continue
        h, w = img.shape[:2]
        # LFW is centred on the person: the box nearest the centre is theirs.
        box = min(dets, key=lambda r: abs(r.center().x - w / 2) + abs(r.center().y - h / 2))
        pts68 = np.array([[p.x, p.y] for p in p68(img, box).parts()], dtype=np.float64)
        pts5 = np.array([[p.x, p.y] for p in p5(img, box).parts()], dtype=np.float64)
        m = similarity_transform(arcface_points_from_68(pts68), ARCFACE_TEMPLATE)
        mapped.append(pts5 @ m[:, :2].T + m[:, 2])
    arr = np.stack(mapped)
    mean = arr.mean(axis=0)
    print(f"{len(arr)} faces of {len(chosen)} sampled LFW folds 1-4 images")
    print("DLIB5_TEMPLATE = np.array(\n    [")
    for x, y in mean:
        print(f"        [{x:.4f}, {y:.4f}],")
    print("    ],\n    dtype=np.float64,\n)")
    spread = np.sqrt(((arr - mean) ** 2).sum(axis=2)).mean(axis=0)
    print("mean distance of each point from its mean (px):", np.round(spread, 2).tolist())


if __name__ == "__main__":
    main()
