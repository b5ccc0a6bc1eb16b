"""`facelib reembed --model NAME`: fill in an optional model's vectors from kept enrolment photos.

A model enabled after people were enrolled has no vector for their faces: such faces are not in
its index (recognition by that model does not see them). With FACELIB_KEEP_ENROLMENT_PHOTOS=1
each enrolment photo is kept AES-256-GCM encrypted (sql/0010_models.sql); this command decrypts
them in batches, embeds the face at its stored box with the installed model, and writes each
batch in its own transaction. Resumable: a run picks only faces still missing the vector, so an
interrupted run is simply started again. Progress goes to stderr; no personal data is printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from shared import db
from shared.db import transaction
from shared.settings import get_settings


def reembed(
    model: str,
    *,
    batch: int = 50,
    limit: int | None = None,
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, int]:
    """Compute `model`'s vector for every face that has a kept photo and no vector yet.

    Returns {"done", "failed", "without_photo"}: faces filled in, faces whose photo no longer
    yields an embedding (left missing, reported), faces missing the vector with no photo kept
    (only a new enrolment can fill those)."""
    from shared.models import installed
    from worker.engine import EngineConfig, get_engine

    if model == "dlib" or model not in db.faces.EMBEDDING_COLUMNS:
        raise ValueError(f"--model must be an optional model: {', '.join(_optional())}")
    if installed(model) is None:
        raise RuntimeError(
            f"{model} is not installed: run `facelib models install {model} --accept-license`"
        )
    s = get_settings()
    engine = get_engine(
        EngineConfig(
            max_pixels=s.max_image_pixels,
            max_decode_bytes=s.max_decode_bytes,
            backend=s.embedding_backend,
            model_cache_dir=s.model_cache_dir,
            extra_models=(model,),
        )
    )
    version = engine.versions[model]
    with transaction() as conn:
        counts = db.faces.count_missing_embedding(conn, model)
    total = counts["with_photo"] if limit is None else min(limit, counts["with_photo"])
    progress(
        f"reembed {model}: {counts['missing']} faces lack its vector, {counts['with_photo']}"
        " of them with a kept photo"
    )
    done = failed = 0
    after = 0
    started = time.monotonic()
    while limit is None or done + failed < limit:
        size = batch if limit is None else min(batch, limit - done - failed)
        with transaction() as conn:
            rows = db.faces.faces_missing_embedding(conn, s, model, after, size)
        if not rows:
            break
        vectors = []
        for row in rows:
            after = row["id"]
            try:
                vectors.append((row["id"], _embed(engine, model, row["photo"], row["box"])))
            except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the run
                failed += 1
                progress(f"face {row['id']}: not embedded ({type(exc).__name__})")
        with transaction() as conn:
            for face_id, vector in vectors:
                done += db.faces.set_face_embedding(conn, face_id, model, vector, version)
        rate = (done + failed) / max(time.monotonic() - started, 1e-9)
        progress(f"reembed {model}: {done + failed}/{total} ({rate:.1f} faces/s)")
    return {
        "done": done,
        "failed": failed,
        "without_photo": counts["missing"] - counts["with_photo"],
    }


def _embed(engine, model: str, photo: bytes, box: list[int]):  # noqa: ANN001, ANN202
    """The face of an enrolment photo, as registration found it: the largest face, no quality
    gate (it passed them at enrolment; an un-tagged rotated photo is turned as then); at the
    stored box when the detector finds nothing now."""
    from shared.errors import FaceLibError

    try:
        return engine.analyze(photo, "recognize", "NONE").faces[0].embeddings[model]
    except FaceLibError:
        face = engine.embed_box(photo, tuple(float(v) for v in box))
        return face.embeddings[model]


def _optional() -> list[str]:
    return [m for m in db.faces.EMBEDDING_COLUMNS if m != "dlib"]
