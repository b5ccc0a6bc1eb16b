"""Pure face engine: image bytes to checked, unit-norm face embeddings (no DB, Celery or Flask).

`get_engine(config).analyze(image_bytes, "register" | "recognize")` is the whole interface;
docs/engine.md describes the pipeline, the quality gates and how their thresholds were measured.
"""

from worker.engine.backends import (
    BackendUnavailableError,
    DlibBackend,
    EmbeddingBackend,
    make_backend,
)
from worker.engine.config import EngineConfig
from worker.engine.engine import Analysis, AnalyzedFace, FaceEngine, get_engine

__all__ = [
    "Analysis",
    "AnalyzedFace",
    "BackendUnavailableError",
    "DlibBackend",
    "EmbeddingBackend",
    "EngineConfig",
    "FaceEngine",
    "get_engine",
    "make_backend",
]
