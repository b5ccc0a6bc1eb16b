"""The face engine's settings: every threshold it applies, with its default.

docs/engine.md says why each default was chosen and which command prints what each gate refuses
on LFW; change them there and here together.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names of the quality checks, as used in `EngineConfig.recognize_checks`.
CHECK_FRAME = "frame"  # FACE_OUT_OF_FRAME
CHECK_SIZE = "size"  # FACE_TOO_SMALL
CHECK_POSE = "pose"  # FACE_POSE_EXTREME
CHECK_BLUR = "blur"  # FACE_BLURRY
ALL_CHECKS = frozenset({CHECK_FRAME, CHECK_SIZE, CHECK_POSE, CHECK_BLUR})

# Per-request quality control (`qualityControl`), as the large face APIs offer it. What each
# level checks is in docs/engine.md ("Quality control levels"); `gates_for` maps a level to the
# gates and thresholds one `analyze` call applies.
QUALITY_LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")
# HIGH: NORMAL's gates with stricter thresholds (docs/engine.md has what each costs on LFW).
HIGH_MIN_FACE_SCALE = 1.25  # x min_face_px
HIGH_MAX_OUT_OF_FRAME = 0.05
HIGH_MAX_POSE = 0.50
HIGH_MAX_BLUR = 0.60

# Optional embedding models the engine can compute beside its backend (docs/models.md).
EXTRA_MODELS = frozenset({"mobilefacenet"})


@dataclass(frozen=True)
class EngineConfig:
    """Thresholds and resources of one `FaceEngine`. Frozen and hashable: it keys the cache."""

    # Decoding. Images over max_pixels (width*height read from the header) are refused before
    # any pixel is decoded; images whose shorter side is below min_image_side cannot hold a face
    # the size gate accepts, so they are refused too.
    max_pixels: int = 25_000_000
    # ... and so are decodes whose estimated peak memory (pixels x bytes per pixel of the mode,
    # shared/imaging.py) is over this; JPEGs decode at a coarser DCT scale instead.
    max_decode_bytes: int = 192 * 1024 * 1024
    min_image_side: int = 80
    # Large JPEGs decode at a DCT-reduced scale (1/2, 1/4, 1/8) that keeps the long side at least
    # this; the face is re-decoded at a finer scale if its chip would otherwise be upsampled.
    # None decodes every JPEG at full size.
    draft_long_side: int | None = 1280

    # Detection: HOG on a copy whose long side is at most detect_max_side, boxes mapped back.
    detect_max_side: int = 640
    # Second pass, only when the first found no face: fine enough that a face of min_face_px
    # reaches the detector's 80 px window (the detector's 2x upsampling when that suffices).
    upsample_small: bool = True
    # Third try, only when both found nothing: the image turned by 90, 270 and 180 degrees (for
    # photos rotated without an EXIF Orientation tag). Cheap: one pass each, no upsampling.
    try_rotations: bool = True

    # Quality gates (None or 0 disables one). Registration applies every gate.
    min_face_px: int = 80  # detector box width on the original image, in pixels
    max_out_of_frame: float = 0.10  # share of the box width lying outside the image
    max_blur: float | None = 0.70  # blur score of the aligned chip, 0 sharp .. 1 flat
    max_pose: float | None = 0.70  # yaw score from the 5 landmarks, 0 frontal .. 1 profile
    # Registration refuses a photo whose second-largest face has at least this share of the
    # largest face's box area (several people of similar size); smaller faces are background.
    multi_face_ratio: float = 0.40
    # Recognition looks at the largest face and applies only these gates; see docs/engine.md.
    recognize_checks: frozenset[str] = frozenset({CHECK_FRAME, CHECK_SIZE})

    # Embedding.
    num_jitters: int = 0
    backend: str = "dlib"  # "dlib" | "onnx"
    backend_threads: int = 1  # intra-op threads of the ONNX backend (dlib's CPU path is serial)
    # Where the ONNX backend caches the graph it builds (FACELIB_MODEL_CACHE, from Settings);
    # None: ~/.cache/facelib.
    model_cache_dir: str | None = None
    # Installed optional models (shared/models.py) embedded beside the backend's, on the same
    # face: each lands in `AnalyzedFace.embeddings[name]`. Empty: the engine runs as it always
    # did. `models_home` overrides $FACELIB_HOME for finding them; `mobilefacenet_landmarks`
    # ("68" or "5") overrides the alignment docs/models.md measured best.
    extra_models: tuple[str, ...] = ()
    models_home: str | None = None
    mobilefacenet_landmarks: str | None = None

    def __post_init__(self) -> None:
        # Accept any iterable of names, but store a frozenset so the config stays hashable.
        object.__setattr__(self, "recognize_checks", frozenset(self.recognize_checks))
        unknown = set(self.recognize_checks) - ALL_CHECKS
        if unknown:
            raise ValueError(f"unknown recognize_checks: {sorted(unknown)}")
        if self.max_pixels <= 0 or self.detect_max_side < 80:
            raise ValueError("max_pixels must be > 0 and detect_max_side >= 80")
        if not 0.0 < self.multi_face_ratio <= 1.0:
            raise ValueError("multi_face_ratio must be in (0, 1]")
        object.__setattr__(self, "extra_models", tuple(self.extra_models))
        unknown_models = set(self.extra_models) - EXTRA_MODELS
        if unknown_models:
            raise ValueError(f"unknown extra_models: {sorted(unknown_models)}")
        if self.mobilefacenet_landmarks not in (None, "68", "5"):
            raise ValueError("mobilefacenet_landmarks must be '68' or '5'")


@dataclass(frozen=True)
class Gates:
    """The quality gates one `analyze` call applies (None or 0: that gate is off)."""

    min_face_px: int | None
    max_out_of_frame: float | None
    max_pose: float | None
    max_blur: float | None


def gates_for(cfg: EngineConfig, purpose: str, level: str | None) -> Gates:
    """Gates of a request's `qualityControl` level; None: the defaults of today (registration
    NORMAL: every gate; recognition: `cfg.recognize_checks`, i.e. LOW by default).

    - NONE: no quality gate (a face must still be found, and registration still refuses a
      photo of several people of similar size: that is about identity, not quality);
    - LOW: out of frame and too small;
    - NORMAL: LOW plus extreme pose and blur, at the configured thresholds;
    - HIGH: NORMAL's gates with stricter thresholds (HIGH_*).
    """
    if level is None:
        checks = ALL_CHECKS if purpose == "register" else cfg.recognize_checks
    elif level not in QUALITY_LEVELS:
        raise ValueError(f"qualityControl must be one of {', '.join(QUALITY_LEVELS)}")
    elif level == "NONE":
        checks = frozenset()
    elif level == "LOW":
        checks = frozenset({CHECK_FRAME, CHECK_SIZE})
    else:
        checks = ALL_CHECKS
    high = level == "HIGH"
    min_face = cfg.min_face_px
    if high and min_face:
        min_face = round(min_face * HIGH_MIN_FACE_SCALE)
    return Gates(
        min_face_px=min_face if CHECK_SIZE in checks else None,
        max_out_of_frame=(
            (HIGH_MAX_OUT_OF_FRAME if high else cfg.max_out_of_frame)
            if CHECK_FRAME in checks
            else None
        ),
        max_pose=(HIGH_MAX_POSE if high else cfg.max_pose) if CHECK_POSE in checks else None,
        max_blur=(HIGH_MAX_BLUR if high else cfg.max_blur) if CHECK_BLUR in checks else None,
    )
