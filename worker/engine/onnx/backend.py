"""dlib's face descriptor ResNet on ONNX Runtime: the graph built once, cached on disk, run.

The descriptors match `face_recognition_model_v1.compute_face_descriptor(chip)` to within
float32 rounding, at about 20x the speed on CPU (docs/onnx-backend.md has the measurements and
the command that prints them). No weights ship with the repository: the graph is built from the
installed `face_recognition_models` file at start-up (a fraction of a second) and cached on disk
under a key made of the .dat file's sha256, so a later start only loads it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shared.models import sha256_file
from worker.engine.chips import CHIP_SIZE, DESCRIPTOR_DIM, checked_chips
from worker.engine.models import RESNET_MODEL_NAME, face_recognition_model_path
from worker.engine.onnx.graph import GRAPH_REVISION, INPUT_NAME, OUTPUT_NAME, build_onnx_model

log = logging.getLogger(__name__)

__all__ = ["OnnxBackend"]


class OnnxBackend:
    """Face descriptors with ONNX Runtime, equal to dlib's to float32 rounding.

    One instance owns one InferenceSession; `embed` is safe to call from several threads.
    `cache_dir` is where the built graph is cached: the service passes FACELIB_MODEL_CACHE
    (`Settings.model_cache_dir`, through `EngineConfig.model_cache_dir`); None means
    `~/.cache/facelib`.
    """

    name = "onnx"
    model = RESNET_MODEL_NAME  # the same weights as dlib's backend, hence the same embedding space

    def __init__(
        self, threads: int = 1, model_path: str | None = None, cache_dir: str | None = None
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self.model_path = str(model_path or face_recognition_model_path())
        self.model_sha256 = sha256_file(self.model_path)
        self.version = f"{RESNET_MODEL_NAME}/onnx-{self.model_sha256[:12]}"
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "facelib"
        self.cache_path = self.cache_dir / (
            f"{RESNET_MODEL_NAME}-{self.model_sha256}-r{GRAPH_REVISION}.onnx"
        )
        #: True when this instance loaded the graph from the disk cache rather than building it.
        self.loaded_from_cache = False

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options = options
        self._session = self._open_session()

    def _open_session(self) -> ort.InferenceSession:
        providers = ["CPUExecutionProvider"]
        if self.cache_path.is_file():
            try:
                session = ort.InferenceSession(
                    str(self.cache_path), self._options, providers=providers
                )
                self.loaded_from_cache = True
                return session
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
                log.warning(
                    "rebuilding the ONNX model: cached %s unusable: %s", self.cache_path, exc
                )
        data = build_onnx_model(self.model_path).SerializeToString()
        self._write_cache(data)
        return ort.InferenceSession(data, self._options, providers=providers)

    def _write_cache(self, data: bytes) -> None:
        # Write-then-rename so that concurrent workers never see a half-written file. A cache
        # that cannot be written (read-only home, full disk) only costs a rebuild next start.
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".onnx")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.cache_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not cache the ONNX model in %s: %s", self.cache_dir, exc)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors for (N, 150, 150, 3) uint8 RGB face chips, in one batched run.

        Returns (N, 128) float32, equal to dlib's `compute_face_descriptor(chip)` with
        num_jitters=0 to within float32 rounding.
        """
        chips = checked_chips(chips, CHIP_SIZE)
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chips)})
        return out
