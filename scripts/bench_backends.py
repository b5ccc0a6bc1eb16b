"""Benchmark the descriptor step: dlib vs the ONNX Runtime backend (1 and 2 threads).

Times only the chip -> 128-d descriptor step (detection and alignment are shared by both
backends), for one face per call and for a batch of 32, and checks the ONNX descriptors against
dlib's. Prints a Markdown table for docs/onnx-backend.md.

    uv run python scripts/bench_backends.py [--repeats 5] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
    import dlib
    import face_recognition_models
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker.engine.onnx.backend import OnnxBackend  # noqa: E402

SAMPLES = REPO / "tests" / "fixtures" / "faces"
LFW = REPO.parent / "shared" / "faces" / "lfw" / "images"


def load_chips(count: int) -> np.ndarray:
    """Face chips (count, 150, 150, 3) uint8 from the sample photos, topped up from LFW."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(
        face_recognition_models.pose_predictor_five_point_model_location()
    )
    paths = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if LFW.is_dir():
        paths += sorted(LFW.glob("*/*.jpg"))[::97]
    chips: list[np.ndarray] = []
    for path in paths:
        img = np.asarray(Image.open(path).convert("RGB"))
        for box in detector(img, 0) or detector(img, 1):
            chips.append(dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25))
        if len(chips) >= count:
            break
    while len(chips) < count:  # no LFW: reuse the samples
        chips += chips[: count - len(chips)]
    return np.stack(chips[:count])


def per_face_ms(fn: Callable[[], object], faces: int, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / faces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    chips = load_chips(args.batch)
    one = chips[:1]
    facerec = dlib.face_recognition_model_v1(
        face_recognition_models.face_recognition_model_location()
    )
    reference = np.array(facerec.compute_face_descriptor(list(chips)), dtype=np.float64)

    rows = []
    dlib_1 = per_face_ms(lambda: facerec.compute_face_descriptor(one[0]), 1, args.repeats)
    dlib_b = per_face_ms(
        lambda: facerec.compute_face_descriptor(list(chips)), len(chips), max(1, args.repeats // 2)
    )
    rows.append((f"dlib {dlib.__version__} (`compute_face_descriptor`)", "-", dlib_1, dlib_b, 0.0))

    startup = {}
    with tempfile.TemporaryDirectory() as cache:
        for threads in (1, 2):
            t = time.perf_counter()
            backend = OnnxBackend(threads=threads, cache_dir=cache)
            startup["cache" if backend.loaded_from_cache else "build"] = time.perf_counter() - t
            out = backend.embed(chips).astype(np.float64)
            max_l2 = float(np.linalg.norm(out - reference, axis=1).max())
            one_ms = per_face_ms(lambda b=backend: b.embed(one), 1, args.repeats * 20)
            batch_ms = per_face_ms(lambda b=backend: b.embed(chips), len(chips), args.repeats * 4)
            rows.append(
                (f"onnx (onnxruntime {ort.__version__}, fp32)", threads, one_ms, batch_ms, max_l2)
            )

    n = len(chips)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, dlib {dlib.__version__}"
    )
    print(
        f"Faces: {n} chips (150x150) from tests/fixtures/faces"
        + (" and LFW" if LFW.is_dir() else "")
    )
    print()
    print(
        f"| backend | threads | ms/face, 1 face | ms/face, batch of {n} "
        f"| speed-up vs dlib (1 / {n}) | max L2 vs dlib |"
    )
    print("|---|---|---|---|---|---|")
    for name, threads, a, b, l2 in rows:
        print(
            f"| {name} | {threads} | {a:.2f} | {b:.2f} | {dlib_1 / a:.1f}x / {dlib_b / b:.1f}x "
            f"| {l2:.1e} |"
        )
    print()
    print(
        f"Load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
        "(other processes on the machine skew the timings)"
    )
    print(
        "ONNX backend start-up: "
        f"build from .dat {1000 * startup.get('build', float('nan')):.0f} ms, "
        f"load from cache {1000 * startup.get('cache', float('nan')):.0f} ms"
    )


if __name__ == "__main__":
    main()
