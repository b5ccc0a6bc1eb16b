"""Embedding backends: aligned 150x150 face chips in, raw 128-d descriptors out.

The engine aligns faces itself (`dlib.get_face_chip(img, shape, size=150, padding=0.25)`, exactly
what dlib's `compute_face_descriptor(img, shape)` does inside), so a backend only runs the
network. `DlibBackend` is the reference; the ONNX port of the same network lives in
`worker.engine.onnx` and is imported only when asked for.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

import dlib
import numpy as np

from worker.engine.chips import CHIP_SIZE, DESCRIPTOR_DIM, checked_chips
from worker.engine.models import RESNET_MODEL_NAME, face_recognition_model_path


class BackendUnavailableError(RuntimeError):
    """The configured embedding backend cannot be loaded in this process."""


@runtime_checkable
class EmbeddingBackend(Protocol):
    name: str
    version: str

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 RGB chips -> (N, 128) float32 raw (not normalised) descriptors."""
        ...


class DlibBackend:
    """dlib's ResNet (`dlib_face_recognition_resnet_model_v1`) through dlib's own CPU code."""

    name = "dlib"
    model = RESNET_MODEL_NAME

    def __init__(self, num_jitters: int = 0) -> None:
        if num_jitters < 0:
            raise ValueError("num_jitters must be >= 0")
        self.num_jitters = num_jitters
        self.version = f"dlib-{dlib.__version__}"
        self._net = dlib.face_recognition_model_v1(face_recognition_model_path())
        # The network object keeps per-call state: one call at a time per instance.
        self._lock = threading.Lock()

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = checked_chips(chips, CHIP_SIZE)
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        batch = [np.ascontiguousarray(c) for c in chips]
        with self._lock:
            # One batched call: dlib runs the chips through the network together.
            out = self._net.compute_face_descriptor(batch, self.num_jitters)
        return np.asarray([np.asarray(d) for d in out], dtype=np.float32)


def make_backend(
    name: str, threads: int = 1, num_jitters: int = 0, cache_dir: str | None = None
) -> EmbeddingBackend:
    """The embedding backend called `name` ("dlib" or "onnx"); `cache_dir` is where the ONNX
    backend caches the graph it builds (None: its default, `~/.cache/facelib`)."""
    if name == "dlib":
        return DlibBackend(num_jitters=num_jitters)
    if name == "onnx":
        if num_jitters:
            raise ValueError("num_jitters is supported by the dlib backend only")
        try:
            from worker.engine.onnx.backend import OnnxBackend
        except ImportError as exc:
            raise BackendUnavailableError(
                "embedding backend 'onnx' is unavailable: worker.engine.onnx.backend could not be "
                f"imported ({exc}); use backend='dlib' or install the ONNX backend"
            ) from exc
        return OnnxBackend(threads=threads, cache_dir=cache_dir)
    raise ValueError(f"unknown embedding backend {name!r}: expected 'dlib' or 'onnx'")


def make_extra_model(
    name: str, threads: int = 1, home: str | None = None, landmarks: str | None = None
):
    """The installed optional model `name` (only "mobilefacenet" today), ready to embed.

    Raises BackendUnavailableError naming the install command when it is not installed.
    """
    if name != "mobilefacenet":
        raise ValueError(f"unknown model {name!r}: expected 'mobilefacenet'")
    from shared.models import installed
    from worker.engine.mobilefacenet import DEFAULT_LANDMARKS, MobileFaceNetBackend

    found = installed(name, home)
    if found is None:
        raise BackendUnavailableError(
            f"model {name!r} is not installed: an operator runs `facelib models install {name} "
            "--accept-license` first (docs/models.md)"
        )
    return MobileFaceNetBackend(
        found.onnx_path, threads=threads, landmarks=landmarks or DEFAULT_LANDMARKS
    )
