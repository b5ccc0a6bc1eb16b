"""Benchmark the face engine against face_recognition's defaults, for speed and for agreement.

(a) face_recognition defaults: decode with Pillow, `face_locations(img)` (HOG, one upsampling, on
    the full image) and `face_encodings(img, locs)` (5-point alignment, every face found).
(b) this engine: `FaceEngine.analyze(bytes, "recognize")`, with the recognition gates off so that
    both pipelines embed every image that shows a face.

Speed: each image of the samples set (and --lfw-images LFW images) once through each pipeline,
in one process, after a warm-up. Agreement: the 4,200 LFW pairs of folds 1-7, each image
embedded once by each pipeline (the largest face; the central box when a pipeline finds none),
same/different decided at Euclidean distance 0.6 on the raw dlib descriptors, as dlib states.

    uv run python scripts/bench_engine.py --pairs            # the full run, ~10 min on 2 cores
    uv run python scripts/bench_engine.py --lfw-images 100   # speed only, ~1 min
    uv run python scripts/bench_engine.py --lfw-images 0 --model mobilefacenet
                                                # + the embedding step of both models, 1 thread
    uv run python scripts/bench_engine.py --quality-levels [--folds 1-3] [--model mobilefacenet]
        [--dump CACHE.npz]  # only: what each qualityControl level (NONE/LOW/NORMAL/HIGH)
        # refuses on LFW pairs and what it costs in accuracy (refusals counted as errors, and
        # among the photos read); --dump caches the one ungated pass (~8 min on 2 busy cores)

With `--model mobilefacenet` (installed: docs/models.md) the run also times, per face and on one
thread, dlib's network on ONNX Runtime (150x150 chip) against MobileFaceNet (112x112 crop), the
network alone and the whole step (68 landmarks, alignment, network), on the same faces.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.errors import FaceLibError  # noqa: E402
from worker.engine import EngineConfig, FaceEngine  # noqa: E402
from worker.engine.chips import CHIP_PADDING, CHIP_SIZE  # noqa: E402
from worker.engine.models import face_recognition_model_path, shape_predictor_5_path  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
    import face_recognition  # noqa: E402

THRESHOLD = 0.6  # dlib's same/different threshold on raw descriptors
# LFW deep-funneled images are 250x250 with the face centred; where a detector finds nothing we
# embed this box, the median of the boxes HOG finds on LFW (measured; see docs/engine.md).
LFW_CENTRAL_BOX = (77, 89, 182, 194)  # left, top, right, bottom

Raw = np.ndarray | None


def _largest(boxes: list[tuple[int, int, int, int]]) -> int:
    """Index of the largest face_recognition (top, right, bottom, left) box."""
    return max(
        range(len(boxes)), key=lambda i: (boxes[i][2] - boxes[i][0]) * (boxes[i][1] - boxes[i][3])
    )


def pipeline_a(data: bytes) -> list[np.ndarray]:
    img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    locs = face_recognition.face_locations(img)
    return face_recognition.face_encodings(img, locs)


def largest_a(data: bytes, fallback: tuple[int, int, int, int] | None) -> tuple[Raw, bool]:
    """(a)'s descriptor of the largest face, or of `fallback` when it finds none."""
    img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    locs = face_recognition.face_locations(img)
    if locs:
        return np.asarray(face_recognition.face_encodings(img, [locs[_largest(locs)]])[0]), False
    if fallback is None:
        return None, True
    left, top, right, bottom = fallback
    css = (top, right - 1, bottom - 1, left)  # face_recognition boxes are inclusive
    return np.asarray(face_recognition.face_encodings(img, [css])[0]), True


def largest_b(
    engine: FaceEngine, data: bytes, fallback: tuple[int, int, int, int] | None
) -> tuple[Raw, bool, dict]:
    """(b)'s raw descriptor (unit embedding times its norm) of the largest face, or fallback."""
    try:
        face = engine.analyze(data, "recognize").faces[0]
        fell_back = False
    except FaceLibError as exc:
        if exc.err.code != 4001 or fallback is None:  # NO_FACE
            return None, True, {}
        face = engine.embed_box(data, fallback)
        fell_back = True
    raw = face.embedding.astype(np.float64) * face.quality["descriptor_norm"]
    return raw, fell_back, face.quality


def bench_config(backend: str) -> EngineConfig:
    # Recognition gates off: (a) has none, and the comparison is of the pipelines themselves.
    return EngineConfig(backend=backend, recognize_checks=frozenset())


# -- speed ------------------------------------------------------------------------------------


def time_calls(fn: Callable[[bytes], object], images: list[bytes]) -> list[float]:
    fn(images[0])  # warm-up: first-call allocations, caches
    out = []
    for data in images:
        t = time.perf_counter()
        try:
            fn(data)
        except FaceLibError:
            pass  # a refusal is a result too; with the gates off only NO_FACE can happen
        out.append(time.perf_counter() - t)
    return out


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def speed(name: str, images: list[bytes], engine: FaceEngine) -> tuple[str, dict[str, float]]:
    steps: dict[str, list[float]] = {}

    def run_b(data: bytes) -> None:
        a = engine.analyze(data, "recognize")
        for k, v in a.timings.items():
            steps.setdefault(k, []).append(v)

    ta = time_calls(pipeline_a, images)
    tb = time_calls(run_b, images)
    row = (
        f"| {name} ({len(images)} images) "
        f"| {statistics.median(ta) * 1e3:.0f} | {p95(ta) * 1e3:.0f} | {sum(ta):.2f} "
        f"| {statistics.median(tb) * 1e3:.0f} | {p95(tb) * 1e3:.0f} | {sum(tb):.2f} "
        f"| **{sum(ta) / sum(tb):.2f}x** "
        f"(median {statistics.median(ta) / statistics.median(tb):.2f}x) |"
    )
    return row, {k: statistics.median(v) for k, v in steps.items()}


def embed_overhead(images: list[bytes], engine: FaceEngine) -> str:
    """The engine's embedding step per face versus bare dlib calls on the same face."""
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(shape_predictor_5_path())
    net = dlib.face_recognition_model_v1(face_recognition_model_path())
    bare_img, bare_chip, ours = [], [], []
    for data in images:
        img = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        dets = detector(img, 1)
        if not dets:
            continue
        shape = predictor(img, dets[0])
        chip = dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        net.compute_face_descriptor(chip)  # warm
        for _ in range(3):
            t = time.perf_counter()
            net.compute_face_descriptor(img, shape)
            bare_img.append(time.perf_counter() - t)
            t = time.perf_counter()
            net.compute_face_descriptor(chip)
            bare_chip.append(time.perf_counter() - t)
            t = time.perf_counter()
            raw = engine.backend.embed(chip[np.newaxis])[0]
            _ = (raw / np.linalg.norm(raw)).astype(np.float32)
            ours.append(time.perf_counter() - t)
    m_img, m_chip, m_ours = (statistics.median(x) * 1e3 for x in (bare_img, bare_chip, ours))
    return (
        f"Embedding step per face (median of {len(ours)}): engine {m_ours:.1f} ms "
        f"(backend.embed + normalise); bare `compute_face_descriptor(chip)` {m_chip:.1f} ms "
        f"-> **{m_ours / m_chip:.3f}x**; bare `compute_face_descriptor(img, shape)` "
        f"{m_img:.1f} ms -> {m_ours / m_img:.3f}x"
    )


# -- pairs ------------------------------------------------------------------------------------

_worker_engine: FaceEngine | None = None


def _init_worker(backend: str) -> None:
    global _worker_engine
    _worker_engine = FaceEngine(bench_config(backend))


def _embed_both(path: str) -> tuple[str, Raw, bool, Raw, bool, dict]:
    assert _worker_engine is not None
    data = Path(path).read_bytes()
    ra, fa = largest_a(data, LFW_CENTRAL_BOX)
    rb, fb, q = largest_b(_worker_engine, data, LFW_CENTRAL_BOX)
    return path, ra, fa, rb, fb, q


def lfw_path(lfw: Path, name: str, number: str) -> Path:
    return lfw / "images" / name / f"{name}_{int(number):04d}.jpg"


def pairs_part(lfw: Path, backend: str, workers: int, dump: Path | None) -> list[str]:
    pairs = list(csv.DictReader((lfw / "pairs.csv").open(encoding="utf-8")))
    paths = sorted(
        {str(lfw_path(lfw, p["name1"], p["image1"])) for p in pairs}
        | {str(lfw_path(lfw, p["name2"], p["image2"])) for p in pairs}
    )
    t = time.perf_counter()
    results: dict[str, tuple] = {}
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(backend,)) as pool:
        for i, res in enumerate(pool.map(_embed_both, paths, chunksize=16), 1):
            results[res[0]] = res[1:]
            if i % 500 == 0:
                print(f"  embedded {i}/{len(paths)} images", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t

    fb_a = sum(r[1] for r in results.values())
    fb_b = sum(r[3] for r in results.values())
    n = len(pairs)
    agree = correct_a = correct_b = pairs_fallback = 0
    gaps = []
    for p in pairs:
        r1 = results[str(lfw_path(lfw, p["name1"], p["image1"]))]
        r2 = results[str(lfw_path(lfw, p["name2"], p["image2"]))]
        same = p["kind"] == "same"
        da = float(np.linalg.norm(r1[0] - r2[0]))
        db = float(np.linalg.norm(r1[2] - r2[2]))
        gaps.append(abs(da - db))
        agree += (da < THRESHOLD) == (db < THRESHOLD)
        correct_a += (da < THRESHOLD) == same
        correct_b += (db < THRESHOLD) == same
        pairs_fallback += r1[1] or r1[3] or r2[1] or r2[3]
    if dump:
        keys = sorted(results)
        qkeys = sorted({k for r in results.values() for k in r[4]})
        np.savez_compressed(
            dump,
            paths=np.array(keys),
            raw_a=np.array([results[k][0] for k in keys]),
            raw_b=np.array([results[k][2] for k in keys]),
            fallback_a=np.array([results[k][1] for k in keys]),
            fallback_b=np.array([results[k][3] for k in keys]),
            quality_keys=np.array(qkeys),
            quality=np.array([[results[k][4].get(q, np.nan) for q in qkeys] for k in keys]),
        )
    return [
        f"LFW pairs (folds 1-7): {n} pairs, {len(paths)} images embedded by each pipeline "
        f"in {elapsed:.0f} s ({workers} processes). No face found: (a) {fb_a} images, "
        f"(b) {fb_b} images; both embed the central box {LFW_CENTRAL_BOX} for those "
        f"({pairs_fallback} pairs involve one).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| same/different decisions identical at L2 {THRESHOLD} "
        f"| **{agree / n:.2%}** ({n - agree} of {n} differ) |",
        f"| accuracy (a) face_recognition defaults | {correct_a / n:.2%} |",
        f"| accuracy (b) this engine | **{correct_b / n:.2%}** |",
        f"| mean / max abs distance difference per pair "
        f"| {np.mean(gaps):.4f} / {np.max(gaps):.4f} |",
    ]


def model_speed(samples: list[bytes], model: str, repeats: int = 20) -> str:
    """Per-face embedding step of dlib's ONNX backend and of `model`, one thread, same faces."""
    from worker.engine.onnx.backend import OnnxBackend

    engine = FaceEngine(EngineConfig(backend="onnx", extra_models=(model,)))
    extra = engine.extra[model]
    dlib_onnx = OnnxBackend(threads=1)
    t_dlib, t_net, t_step, t_lm, t_align = [], [], [], [], []
    faces = 0
    for data in samples:
        decoded = engine._decode(data, None)
        try:
            box = engine.analyze(data, "recognize").faces[0].box
        except FaceLibError:
            continue
        shape, _ = engine._landmarks(decoded, box)
        chip150 = dlib.get_face_chip(decoded.rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        full = engine._predictor68(decoded.rgb, shape.rect) if extra.landmarks == "68" else shape
        points = np.array([[p.x, p.y] for p in full.parts()], dtype=np.float64)
        chip112 = extra.chip(decoded.rgb, points)
        dlib_onnx.embed(chip150[np.newaxis])  # warm
        extra.embed(chip112[np.newaxis])
        faces += 1
        for _ in range(repeats):
            t = time.perf_counter()
            dlib_onnx.embed(chip150[np.newaxis])
            t_dlib.append(time.perf_counter() - t)
            t = time.perf_counter()
            extra.embed(chip112[np.newaxis])
            t_net.append(time.perf_counter() - t)
            t = time.perf_counter()
            engine._embed_extra(extra, decoded.rgb, shape)
            t_step.append(time.perf_counter() - t)
            t = time.perf_counter()
            if extra.landmarks == "68":
                engine._predictor68(decoded.rgb, shape.rect)
            t_lm.append(time.perf_counter() - t)
            t = time.perf_counter()
            extra.chip(decoded.rgb, points)
            t_align.append(time.perf_counter() - t)
    md, mn, ms, ml, ma = (
        statistics.median(x) * 1e3 for x in (t_dlib, t_net, t_step, t_lm, t_align)
    )
    return (
        f"Embedding per face, 1 thread, median of {len(t_dlib)} ({faces} faces x {repeats}):\n\n"
        "| step | ms |\n|---|---:|\n"
        f"| dlib ResNet on ONNX Runtime (150x150 chip) | {md:.2f} |\n"
        f"| {model} network (112x112 crop) | {mn:.2f} ({mn / md:.2f}x dlib ONNX) |\n"
        f"| {model} step: landmarks ({extra.landmarks} points) + alignment + network "
        f"| {ms:.2f} |\n"
        f"| of which the 68-point predictor | {ml:.2f} |\n"
        f"| of which the alignment (similarity warp to 112x112) | {ma:.2f} |"
    )


# -- quality control levels -------------------------------------------------------------------

_qc_engine: FaceEngine | None = None


def _init_qc(backend: str, model: str | None) -> None:
    global _qc_engine
    _qc_engine = FaceEngine(EngineConfig(backend=backend, extra_models=(model,) if model else ()))


def _analyze_ungated(path: str) -> tuple[str, dict | None, dict | None, int]:
    """One image through the production path with no quality gate: its quality figures and
    embeddings (by model), or the errcode that refused it whatever the level (no face...)."""
    assert _qc_engine is not None
    try:
        a = _qc_engine.analyze(Path(path).read_bytes(), "recognize", "NONE")
    except FaceLibError as exc:
        return path, None, None, exc.errcode
    face = a.faces[0]
    vectors = {("dlib" if k == _qc_engine.model else k): v for k, v in face.embeddings.items()}
    return path, dict(face.quality), vectors, 0


def _passes(q: dict, gates) -> bool:  # noqa: ANN001 - config.Gates
    if gates.max_out_of_frame is not None and q["out_of_frame"] > gates.max_out_of_frame:
        return False
    if gates.min_face_px and q["size_px"] < gates.min_face_px:
        return False
    if gates.max_pose is not None and q["pose"] > gates.max_pose:
        return False
    return not (gates.max_blur is not None and q["blur"] > gates.max_blur)


_QKEYS = ("size_px", "out_of_frame", "pose", "blur")


def _qc_results(
    paths: list[str], backend: str, workers: int, model: str | None, cache: Path | None
) -> dict[str, tuple]:
    """path -> (quality figures or None, vectors by model or None, errcode), from `cache` (an
    .npz this function wrote) when it holds every path, else computed (and written there)."""
    models = ["dlib"] + ([model] if model else [])
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            have = {str(p): i for i, p in enumerate(z["paths"])}
            if set(paths) <= set(have) and all(f"vec_{m}" in z for m in models):
                out = {}
                for p in paths:
                    i = have[p]
                    code = int(z["errcode"][i])
                    q = (
                        None
                        if code
                        else dict(zip(_QKEYS, map(float, z["quality"][i]), strict=True))
                    )
                    vecs = None if code else {m: z[f"vec_{m}"][i] for m in models}
                    out[p] = (q, vecs, code)
                return out
    results: dict[str, tuple] = {}
    with ProcessPoolExecutor(workers, initializer=_init_qc, initargs=(backend, model)) as pool:
        for i, res in enumerate(pool.map(_analyze_ungated, paths, chunksize=16), 1):
            results[res[0]] = res[1:]
            if i % 500 == 0:
                print(f"  analysed {i}/{len(paths)} images", file=sys.stderr, flush=True)
    if cache is not None:
        dims = {"dlib": 128, model: 192}
        np.savez_compressed(
            cache,
            paths=np.array(paths),
            errcode=np.array([results[p][2] for p in paths]),
            quality=np.array(
                [[(results[p][0] or {}).get(k, np.nan) for k in _QKEYS] for p in paths]
            ),
            **{
                f"vec_{m}": np.array(
                    [
                        results[p][1][m] if results[p][1] else np.zeros(dims[m], np.float32)
                        for p in paths
                    ]
                )
                for m in models
            },
        )
    return results


def quality_levels_part(
    lfw: Path,
    backend: str,
    workers: int,
    folds: set[int],
    model: str | None,
    cache: Path | None = None,
) -> list[str]:
    """What each `qualityControl` level costs on LFW pairs: images refused, and verification
    accuracy at the service's decision (score >= 70, each model's own calibration), counting a
    pair with a refused image as an error, and among the pairs whose images were both read.
    Each image is analysed once with no gate; the levels' gates are then applied to its quality
    figures (detection and embedding do not depend on the level)."""
    from shared.score import score_from_distance
    from worker.engine.config import QUALITY_LEVELS, gates_for

    pairs = [
        p
        for p in csv.DictReader((lfw / "pairs.csv").open(encoding="utf-8"))
        if int(p["fold"]) in folds
    ]
    paths = sorted(
        {str(lfw_path(lfw, p["name1"], p["image1"])) for p in pairs}
        | {str(lfw_path(lfw, p["name2"], p["image2"])) for p in pairs}
    )
    results = _qc_results(paths, backend, workers, model, cache)
    models = ["dlib"] + ([model] if model else [])
    cfg = EngineConfig(backend=backend)
    lines = [
        f"LFW pairs of folds {sorted(folds)}: {len(pairs)} pairs, {len(paths)} images; "
        "decision: score >= 70 (FACELIB_MATCH_THRESHOLD) by each model's own table.",
        "",
        "| qualityControl | gates (recognition) | images refused | "
        + " | ".join(
            f"{m}: accuracy, refusals as errors | {m}: accuracy among read" for m in models
        )
        + " |",
        "|---|---|---:|" + "---:|---:|" * len(models),
    ]
    for level in QUALITY_LEVELS:
        g = gates_for(cfg, "recognize", level)
        ok = {
            k: r[0] is not None and _passes(r[0], g) for k, r in results.items()
        }  # read at this level
        refused = sum(not v for v in ok.values())
        cells = []
        for m in models:
            correct = read = correct_read = 0
            for p in pairs:
                k1 = str(lfw_path(lfw, p["name1"], p["image1"]))
                k2 = str(lfw_path(lfw, p["name2"], p["image2"]))
                if not (ok[k1] and ok[k2]):
                    continue
                d = 1.0 - float(results[k1][1][m] @ results[k2][1][m])
                right = (score_from_distance(d, m) >= 70.0) == (p["kind"] == "same")
                read += 1
                correct += right
                correct_read += right
            cells.append(f"{correct / len(pairs):.2%} | {correct_read / max(read, 1):.2%}")
        gate_text = (
            ", ".join(
                f"{k} {v}"
                for k, v in (
                    ("size >=", g.min_face_px),
                    ("frame <=", g.max_out_of_frame),
                    ("pose <=", g.max_pose),
                    ("blur <=", g.max_blur),
                )
                if v
            )
            or "none"
        )
        lines.append(
            f"| {level} | {gate_text} | {refused} ({refused / len(paths):.1%}) | "
            + " | ".join(cells)
            + " |"
        )
    no_face = sum(r[2] != 0 for r in results.values())
    lines.append("")
    lines.append(f"Refused at every level (no usable face): {no_face} images.")
    lines.append("")
    lines.append("Images each gate alone refuses (among those with a face):")
    for level in ("NORMAL", "HIGH"):
        g = gates_for(cfg, "recognize", level)
        read = [r[0] for r in results.values() if r[0] is not None]
        alone = {
            "size": sum(bool(g.min_face_px) and q["size_px"] < g.min_face_px for q in read),
            "frame": sum(q["out_of_frame"] > g.max_out_of_frame for q in read),
            "pose": sum(q["pose"] > g.max_pose for q in read),
            "blur": sum(q["blur"] > g.max_blur for q in read),
        }
        lines.append(f"- {level}: " + ", ".join(f"{k} {v}" for k, v in alone.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=Path, default=REPO.parent / "shared/faces/samples")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared/faces/lfw")
    ap.add_argument("--lfw-images", type=int, default=500, help="LFW images in the speed part")
    ap.add_argument("--pairs", action="store_true", help="run the LFW pairs part (~10 min)")
    ap.add_argument("--backend", choices=("dlib", "onnx"), default="dlib")
    ap.add_argument("--workers", type=int, default=2, help="processes for the pairs part")
    ap.add_argument("--dump", type=Path, help="save the pairs part's per-image results (.npz)")
    ap.add_argument("--model", help="also time this optional model's embedding (mobilefacenet)")
    ap.add_argument(
        "--quality-levels",
        action="store_true",
        help="only: what each qualityControl level costs on LFW pairs (docs/engine.md)",
    )
    ap.add_argument("--folds", default="1-3", help="LFW folds of the quality-levels part")
    args = ap.parse_args()
    if args.quality_levels:
        lo, _, hi = args.folds.partition("-")
        folds = set(range(int(lo), int(hi or lo) + 1))
        lines = quality_levels_part(
            args.lfw, args.backend, args.workers, folds, args.model, args.dump
        )
        print("\n".join(lines))
        return

    engine = FaceEngine(bench_config(args.backend))
    samples = [
        p.read_bytes()
        for p in sorted(args.samples.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    print(
        f"backend {args.backend} ({engine.backend.version}), model {engine.model}, "
        f"dlib {dlib.__version__}, one process\n"
    )
    print(
        "| set | (a) median ms | (a) p95 ms | (a) total s "
        "| (b) median ms | (b) p95 ms | (b) total s | ratio (a)/(b) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    row, steps = speed("samples", samples, engine)
    print(row, flush=True)
    if args.lfw_images:
        lfw_all = sorted((args.lfw / "images").glob("*/*.jpg"))
        step = max(1, len(lfw_all) // args.lfw_images)
        lfw_imgs = [p.read_bytes() for p in lfw_all[::step][: args.lfw_images]]
        print(speed("LFW", lfw_imgs, engine)[0], flush=True)
    print(
        "\n(b) median per step on samples (ms): "
        + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in steps.items())
    )
    print("\n" + embed_overhead(samples, engine), flush=True)
    if args.model:
        print("\n" + model_speed(samples, args.model), flush=True)
    if args.pairs:
        print()
        print("\n".join(pairs_part(args.lfw, args.backend, args.workers, args.dump)))


if __name__ == "__main__":
    main()
