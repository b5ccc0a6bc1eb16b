"""The face engine: image bytes in, the largest face's unit-norm embedding and quality out.

Pipeline (docs/engine.md has the measurements behind each choice):

1. decode: header checks first (pixel count, size), then EXIF-upright RGB; large JPEGs decode at
   a reduced DCT scale.
2. detect: dlib's HOG detector on a copy whose long side is at most `detect_max_side`; a second
   pass with 2x upsampling only when the first finds nothing; as a last resort the image turned
   by a quarter, three quarters and a half turn (photos rotated without an EXIF tag).
3. choose: registration wants exactly one dominant face; recognition takes the largest.
4. gates: out of frame, too small, then on the 5 landmarks extreme pose, and on the aligned
   chip blur. Registration applies all; recognition `EngineConfig.recognize_checks`.
5. landmarks and chip on the full-resolution pixels (re-decoding a reduced JPEG when the chip
   would otherwise be upsampled), the descriptor from the backend, normalised to unit length.

No database, no Celery, no Flask: a pure function of the bytes, so it can be tested and
benchmarked alone. Models load once per `FaceEngine`; use `get_engine` for one per process.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import dlib
import numpy as np
from PIL import Image

from shared.errors import E, FaceLibError
from worker.engine import quality
from worker.engine.backends import EmbeddingBackend, make_backend, make_extra_model
from worker.engine.chips import CHIP_PADDING, CHIP_SIZE
from worker.engine.config import EngineConfig, gates_for
from worker.engine.decode import DecodedImage, decode_image
from worker.engine.models import (
    RESNET_MODEL_NAME,
    shape_predictor_5_path,
    shape_predictor_68_path,
)

Purpose = Literal["register", "recognize"]
Box = tuple[float, float, float, float]  # left, top, right, bottom; right/bottom exclusive

# The side of a face dlib's HOG detector finds without upsampling (its window is 80x80).
_HOG_WINDOW_PX = 80
# Quarter turns (counter-clockwise) tried, in order, when the upright image shows no face.
_ROTATION_TRIES = (1, 3, 2)


@dataclass(frozen=True, eq=False)
class AnalyzedFace:
    """One embedded face. Coordinates are pixels of the upright image at full resolution."""

    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive); may overhang the image
    landmarks: np.ndarray  # (5, 2) float: two corners of each eye, base of the nose
    quality: dict[str, float]  # size_px, det_score, upsampled, out_of_frame, pose, blur, ...
    embedding: np.ndarray  # (128,) float32, unit norm: compare with cosine or L2
    # Every model's unit-norm embedding of this face, by model name: the backend's (the same
    # array as `embedding`) and each of `EngineConfig.extra_models`.
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Analysis:
    faces: list[AnalyzedFace]  # the embedded face(s), largest first (one today)
    face_count: int  # every face the detector found
    width: int  # of the analysed upright image (after EXIF and any retry rotation)
    height: int
    model: str  # the network the embedding comes from
    backend: str  # what ran it ("dlib", "onnx")
    timings: dict[str, float] = field(default_factory=dict)  # decode, detect, landmarks, embed (s)
    rotation: int = 0  # degrees counter-clockwise the engine turned an un-tagged image, 0 usually


@dataclass(frozen=True)
class _Detection:
    box: Box  # in the coordinates of the decoded pixels
    score: float
    upsampled: bool

    def visible_area(self, width: int, height: int) -> float:
        """Area of the box inside the image: a face cut by the border counts for what shows."""
        left, top, right, bottom = self.box
        return max(0.0, min(right, width) - max(left, 0.0)) * max(
            0.0, min(bottom, height) - max(top, 0.0)
        )


_DEFAULT_CONFIG = EngineConfig()


class FaceEngine:
    """Loads dlib's models once; `analyze` is then a pure function of the image bytes.

    Not for concurrent use from several threads (the detector and the network keep per-call
    state): one engine per process, as `get_engine` gives.
    """

    def __init__(self, config: EngineConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(shape_predictor_5_path())
        self.backend: EmbeddingBackend = make_backend(
            config.backend,
            threads=config.backend_threads,
            num_jitters=config.num_jitters,
            cache_dir=config.model_cache_dir,
        )
        # A port of the same network (ONNX) may say which weights it carries.
        self.model: str = getattr(self.backend, "model", RESNET_MODEL_NAME)
        self.extra = {
            name: make_extra_model(
                name,
                threads=config.backend_threads,
                home=config.models_home,
                landmarks=config.mobilefacenet_landmarks,
            )
            for name in config.extra_models
        }
        #: Model name -> version of every embedding this engine computes (the backend's first).
        self.versions: dict[str, str] = {self.model: self.backend.version} | {
            name: extra.version for name, extra in self.extra.items()
        }
        self._predictor68 = None
        if any(getattr(m, "landmarks", None) == "68" for m in self.extra.values()):
            self._predictor68 = dlib.shape_predictor(shape_predictor_68_path())

    # -- the one public operation -------------------------------------------------------------

    def analyze(
        self, image: bytes, purpose: Purpose, quality_control: str | None = None
    ) -> Analysis:
        """Find, check and embed the face in `image` for registration or recognition.

        `quality_control` (NONE | LOW | NORMAL | HIGH, `config.gates_for`) picks the gates; None
        applies the defaults (registration: every gate; recognition: `recognize_checks`).

        Raises FaceLibError with IMAGE_* codes for bad images and NO_FACE, MULTIPLE_FACES
        (registration), FACE_OUT_OF_FRAME, FACE_TOO_SMALL, FACE_POSE_EXTREME, FACE_BLURRY for
        faces that cannot be used.
        """
        if purpose not in ("register", "recognize"):
            raise ValueError(f"purpose must be 'register' or 'recognize', not {purpose!r}")
        cfg = self.config
        gates = gates_for(cfg, purpose, quality_control)
        timings: dict[str, float] = {}

        t = time.perf_counter()
        decoded = self._decode(image, cfg.draft_long_side)
        timings["decode"] = time.perf_counter() - t

        t = time.perf_counter()
        quarter_turns = 0
        found = self._detect(decoded, second_pass=cfg.upsample_small)
        if not found and cfg.try_rotations:
            for k in _ROTATION_TRIES:
                turned = decoded.rotated(k)
                found = self._detect(turned, second_pass=False)
                if found:
                    decoded, quarter_turns = turned, k
                    break
        timings["detect"] = time.perf_counter() - t
        if not found:
            raise FaceLibError(E.NO_FACE)

        # Largest first, by the area inside the image: a bystander cut by the border is not the
        # subject even when the detector's box for them is as large.
        h, w = decoded.rgb.shape[:2]
        found.sort(key=lambda d: d.visible_area(w, h), reverse=True)
        if purpose == "register" and len(found) > 1:
            ratio = found[1].visible_area(w, h) / found[0].visible_area(w, h)
            if ratio >= cfg.multi_face_ratio:
                raise FaceLibError(
                    E.MULTIPLE_FACES,
                    detail=f"{len(found)} faces, the second {ratio:.0%} the area of the largest",
                )
        face = found[0]

        # Geometry gates, on the box in full-resolution coordinates.
        box = _scale_box(face.box, 1.0 / decoded.scale_x, 1.0 / decoded.scale_y)
        size_px = box[2] - box[0]
        frame_out = quality.out_of_frame(box, decoded.width, decoded.height)
        if gates.max_out_of_frame is not None and frame_out > gates.max_out_of_frame:
            raise FaceLibError(
                E.FACE_OUT_OF_FRAME, detail=f"{frame_out:.0%} of the face is outside"
            )
        if gates.min_face_px and size_px < gates.min_face_px:
            raise FaceLibError(
                E.FACE_TOO_SMALL, detail=f"face {size_px:.0f} px wide, minimum {gates.min_face_px}"
            )

        t = time.perf_counter()
        shape, chip_src = self._landmarks(decoded, box)
        if decoded.reduced and chip_src * decoded.scale_x < CHIP_SIZE:
            # The reduced decode would leave the chip upsampled: decode finer, as fine as needed.
            t_decode = time.perf_counter()
            finer = min(1.0, CHIP_SIZE / chip_src)
            long_side = math.ceil(max(decoded.width, decoded.height) * finer) + 8
            decoded = self._decode(image, long_side).rotated(quarter_turns)
            timings["decode"] += time.perf_counter() - t_decode
            shape, chip_src = self._landmarks(decoded, box)
        chip = dlib.get_face_chip(decoded.rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        landmarks = points / np.array([decoded.scale_x, decoded.scale_y])
        pose = quality.yaw_score(landmarks)
        blur = quality.blur_score(chip)
        timings["landmarks"] = time.perf_counter() - t

        if gates.max_pose is not None and pose > gates.max_pose:
            raise FaceLibError(E.FACE_POSE_EXTREME, detail=f"yaw score {pose:.2f}")
        if gates.max_blur is not None and blur > gates.max_blur:
            raise FaceLibError(E.FACE_BLURRY, detail=f"blur score {blur:.2f}")

        t = time.perf_counter()
        raw = self.backend.embed(chip[np.newaxis])[0]
        norm = float(np.linalg.norm(raw))
        if not math.isfinite(norm) or norm < 1e-6:
            raise FaceLibError(E.INTERNAL, detail="degenerate face descriptor")
        embedding = (raw / norm).astype(np.float32)
        timings["embed"] = time.perf_counter() - t
        embeddings = {self.model: embedding}
        for name, extra in self.extra.items():
            t = time.perf_counter()
            embeddings[name] = self._embed_extra(extra, decoded.rgb, shape)
            timings[f"embed_{name}"] = time.perf_counter() - t

        analyzed = AnalyzedFace(
            box=(round(box[0]), round(box[1]), round(box[2]), round(box[3])),
            landmarks=landmarks,
            quality={
                "size_px": float(size_px),
                "det_score": float(face.score),
                "upsampled": float(face.upsampled),
                "out_of_frame": frame_out,
                "pose": pose,
                "blur": blur,
                "chip_source_px": float(chip_src),
                "descriptor_norm": norm,
            },
            embedding=embedding,
            embeddings=embeddings,
        )
        return Analysis(
            faces=[analyzed],
            face_count=len(found),
            width=decoded.width,
            height=decoded.height,
            model=self.model,
            backend=self.backend.name,
            timings=timings,
            rotation=90 * quarter_turns,
        )

    def embed_box(self, image: bytes, box: tuple[float, float, float, float]) -> AnalyzedFace:
        """Embed the face at a known `box` (full-resolution upright coordinates), skipping
        detection and every gate: for pre-cropped data sets such as LFW, and for benchmarks."""
        decoded = self._decode(image, None)
        shape, chip_src = self._landmarks(decoded, box)
        chip = dlib.get_face_chip(decoded.rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        raw = self.backend.embed(chip[np.newaxis])[0]
        norm = float(np.linalg.norm(raw))
        embedding = (raw / max(norm, 1e-12)).astype(np.float32)
        embeddings = {self.model: embedding}
        for name, extra in self.extra.items():
            embeddings[name] = self._embed_extra(extra, decoded.rgb, shape)
        return AnalyzedFace(
            box=(round(box[0]), round(box[1]), round(box[2]), round(box[3])),
            landmarks=landmarks,
            quality={
                "size_px": float(box[2] - box[0]),
                "out_of_frame": quality.out_of_frame(box, decoded.width, decoded.height),
                "pose": quality.yaw_score(landmarks),
                "blur": quality.blur_score(chip),
                "chip_source_px": chip_src,
                "descriptor_norm": norm,
            },
            embedding=embedding,
            embeddings=embeddings,
        )

    # -- steps ----------------------------------------------------------------------------------

    def _embed_extra(
        self, extra: object, rgb: np.ndarray, shape: dlib.full_object_detection
    ) -> np.ndarray:
        """An optional model's unit-norm embedding of the face whose 5 landmarks are `shape`
        (coordinates of `rgb`): aligned on the 68 landmarks (found in the same box) or the 5."""
        if getattr(extra, "landmarks", "5") == "68":
            full = self._predictor68(rgb, shape.rect)
            points = np.array([[p.x, p.y] for p in full.parts()], dtype=np.float64)
        else:
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        chip = extra.chip(rgb, points)  # type: ignore[attr-defined]
        raw = extra.embed(chip[np.newaxis])[0]  # type: ignore[attr-defined]
        norm = float(np.linalg.norm(raw))
        if not math.isfinite(norm) or norm < 1e-6:
            raise FaceLibError(E.INTERNAL, detail="degenerate face descriptor")
        return (raw / norm).astype(np.float32)

    def _decode(self, image: bytes, draft_long_side: int | None) -> DecodedImage:
        cfg = self.config
        return decode_image(
            image,
            max_pixels=cfg.max_pixels,
            max_decode_bytes=cfg.max_decode_bytes,
            min_side=cfg.min_image_side,
            draft_long_side=draft_long_side,
        )

    def _detect(self, decoded: DecodedImage, *, second_pass: bool) -> list[_Detection]:
        """HOG detections, in the coordinates of `decoded.rgb`.

        First pass: a copy whose long side is at most detect_max_side; images whose long side
        is at most half that (thumbnails, LFW's 250 px) get the detector's 2x upsampling, so
        every image is searched at a working resolution of 320-640 px (the pyramid's boxes are
        also finer there). Second pass, only when the first finds nothing: fine enough for a face
        of min_face_px on the original to reach the detector's 80 px window (the 2x upsampling
        when that suffices, else a larger copy, at most the decoded pixels); for a small image
        already upsampled, the other pyramid (no upsampling), which measurably finds faces the
        first missed (docs/engine.md).
        """
        cfg = self.config
        rgb = decoded.rgb
        long_side = max(rgb.shape[:2])
        small_image = 2 * long_side <= cfg.detect_max_side
        first_upsample = 1 if small_image else 0
        found = self._detect_at(rgb, cfg.detect_max_side, upsample=first_upsample)
        if found or not second_pass:
            return found
        if small_image:
            return self._detect_at(rgb, cfg.detect_max_side, upsample=0, upsampled=True)
        first = min(long_side, cfg.detect_max_side)
        needed = long_side
        if cfg.min_face_px:
            full = max(decoded.width, decoded.height)
            needed = min(long_side, math.ceil(full * _HOG_WINDOW_PX / cfg.min_face_px))
        if needed > 2 * first:
            return self._detect_at(rgb, needed, upsample=0, upsampled=True)
        return self._detect_at(rgb, cfg.detect_max_side, upsample=1)

    def _detect_at(
        self, rgb: np.ndarray, max_side: int, *, upsample: int, upsampled: bool = False
    ) -> list[_Detection]:
        h, w = rgb.shape[:2]
        s = min(1.0, max_side / max(h, w))
        if s < 1.0:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            # BILINEAR with a reducing gap: a box pre-reduction then a filtered resize (no
            # aliasing), several times faster than a plain filtered resize of a large image.
            small = np.asarray(
                Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            )
        else:
            small = rgb
        sx, sy = w / small.shape[1], h / small.shape[0]
        rects, scores, _ = self._detector.run(small, upsample, 0.0)
        return [
            _Detection(
                box=_scale_box((r.left(), r.top(), r.right() + 1, r.bottom() + 1), sx, sy),
                score=float(score),
                upsampled=upsampled or upsample > 0,
            )
            for r, score in zip(rects, scores, strict=True)
        ]

    def _landmarks(
        self, decoded: DecodedImage, box: Box
    ) -> tuple[dlib.full_object_detection, float]:
        """The 5 landmarks of the face in `box` (full-resolution coordinates), on `decoded`'s
        pixels, and how many full-resolution pixels the chip's side spans."""
        left, top, right, bottom = _scale_box(box, decoded.scale_x, decoded.scale_y)
        rect = dlib.rectangle(round(left), round(top), round(right) - 1, round(bottom) - 1)
        shape = self._predictor(decoded.rgb, rect)
        details = dlib.get_face_chip_details(shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return shape, float(details.rect.width()) / decoded.scale_x


def _scale_box(box: Box, sx: float, sy: float) -> Box:
    left, top, right, bottom = box
    return (left * sx, top * sy, right * sx, bottom * sy)


_engines: dict[tuple[int, EngineConfig], FaceEngine] = {}
_engines_lock = threading.Lock()


def get_engine(config: EngineConfig = _DEFAULT_CONFIG) -> FaceEngine:
    """This process's engine for `config`, built on first use.

    Keyed by process id as well: a worker that forks after the parent built one gets its own,
    rather than sharing dlib objects across the fork.
    """
    key = (os.getpid(), config)
    engine = _engines.get(key)
    if engine is None:
        with _engines_lock:
            engine = _engines.get(key)
            if engine is None:
                engine = _engines[key] = FaceEngine(config)
    return engine


def adopt_parent_engines() -> int:
    """In a child forked after the parent built its engines: use them (copy-on-write memory,
    no second model load), so a new pool process is up in milliseconds. Returns how many.

    Safe because an engine holds plain model memory and a single-threaded ONNX session (no
    threads to lose in the fork); each child then uses its copy alone.
    """
    parent, me = os.getppid(), os.getpid()
    with _engines_lock:
        inherited = [(cfg, eng) for (pid, cfg), eng in _engines.items() if pid == parent]
        for cfg, eng in inherited:
            _engines.setdefault((me, cfg), eng)
    return len(inherited)
