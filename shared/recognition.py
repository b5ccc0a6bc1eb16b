"""1:N recognition: the nearest enrolled person to a probe embedding, with the seed's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from shared import repo
from shared.errors import E, FaceLibError
from shared.score import format_score, gallery_false_match_rate, score_from_distance
from shared.settings import Settings

PERSON_REF = "_personId"

# Faces fetched from the HNSW index per query; the best face per person is kept among them.
CANDIDATES = 20


def recognition_result(
    conn: psycopg.Connection, settings: Settings, embedding: np.ndarray, job: dict[str, Any]
) -> dict[str, Any]:
    gallery_faces = repo.count_faces(conn)
    if gallery_faces == 0:
        raise FaceLibError(E.LIBRARY_EMPTY)
    rows = repo.nearest_faces(
        conn, embedding, limit=CANDIDATES, ef_search=max(settings.hnsw_ef_search, CANDIDATES)
    )
    if not rows:
        raise FaceLibError(E.LIBRARY_EMPTY)
    best = rows[0]  # ordered by distance: the first row is the best face of the best person
    score = score_from_distance(float(best["distance"]))
    threshold = float(job["request_meta"].get("threshold") or settings.match_threshold)
    is_match = score >= threshold
    data: dict[str, Any] = {
        "isMatch": "true" if is_match else "false",
        "score": format_score(score),
        "galleryFaces": gallery_faces,
        "falseMatchRate": f"{gallery_false_match_rate(score, gallery_faces):.6g}",
    }
    if is_match:
        # stored as a reference: the person's details are filled in when the result is read
        # (render_result), so job rows and callback rows hold no idNum or name
        data[PERSON_REF] = best["person_id"]
    return data


def render_result(conn: psycopg.Connection, settings: Settings, result: dict) -> dict:
    """The client-facing data of a stored result: person details filled in from `persons`."""
    data = dict(result or {})
    person_id = data.pop(PERSON_REF, None)
    if person_id is None:
        return data
    person = repo.get_person(conn, person_id)
    if person is None:  # erased since: the match no longer names anyone
        data["isMatch"] = "false"
        return data
    return {
        "idNum": repo.decrypt_id_num(settings, person),
        "customerID": person["customer_id"],
        "name": person["name"],
        "personType": person["person_type"],
        **data,
    }
