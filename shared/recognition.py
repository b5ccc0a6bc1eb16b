"""1:N recognition: the nearest enrolled person to a probe embedding, with the seed's score."""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg

from shared import db
from shared.errors import E, FaceLibError
from shared.score import false_match_rate, format_score, score_from_distance
from shared.settings import Settings

PERSON_REF = "_personId"

# Faces fetched from the HNSW index per query; the best face per person is kept among them.
CANDIDATES = 20


def decision_floor(meta: dict[str, Any], settings: Settings) -> float:
    """The lowest score that may name a person for this job: the client's floor as the API
    stored it (api_clients.match_floor, default FACELIB_MATCH_THRESHOLD), never less than the
    service threshold for jobs that carry none."""
    floor = meta.get("floor")
    return settings.match_threshold if floor is None else float(floor)


def match_decision(
    distance: float,
    gallery_faces: int,
    meta: dict[str, Any],
    settings: Settings,
    model: str | None = None,
) -> tuple[bool, float]:
    """isMatch and the gallery false-match rate, by the request's or the service's rule.

    - never below the client's floor (`decision_floor`): a request may tighten, not loosen;
    - a request `threshold` (>= the floor) then decides alone: score >= threshold;
    - `seed` mode: score >= FACELIB_MATCH_THRESHOLD (70: 1/1,000 per comparison);
    - `gallery` mode (default): also that the chance a stranger scores this high against
      `gallery_faces` faces, 1 - (1 - FAR(score))^N, is at most the target (1% by default).
    """
    score = score_from_distance(distance, model)
    fmr = false_match_rate(distance, gallery_faces, model)
    floor = decision_floor(meta, settings)
    if score < floor:
        return False, fmr  # below the client's floor nothing a request sends can name a person
    if meta.get("threshold") is not None:
        return score >= float(meta["threshold"]), fmr
    if (meta.get("matchMode") or settings.match_mode) == "seed":
        return True, fmr
    target = float(meta.get("galleryTarget") or settings.gallery_target)
    return fmr <= target, fmr


def deciding_model(settings: Settings) -> str:
    """The model whose vectors and calibration decide (FACELIB_MATCH_MODEL): "dlib" or an
    optional model's name; every answer names it (`data.model`)."""
    return settings.match_model


def recognition_result(
    conn: psycopg.Connection, settings: Settings, embedding: np.ndarray, job: dict[str, Any]
) -> dict[str, Any]:
    """1:N by the deciding model: `embedding` is that model's vector of the probe.

    galleryFaces counts enrolled faces (gallery_counts, sql/0008) whatever vectors they have:
    a face still waiting for `facelib reembed` is counted but not searched, so falseMatchRate
    is an upper bound then, never an under-statement (docs/models.md)."""
    model = deciding_model(settings)
    meta = job["request_meta"] or {}
    filters = {"library_ids": meta.get("libraryIds"), "person_types": meta.get("personTypes")}
    gallery_faces = db.search.count_gallery(conn, **filters)
    if gallery_faces == 0:
        raise FaceLibError(E.LIBRARY_EMPTY)
    filtered = bool(filters["library_ids"] or filters["person_types"])
    rows = db.search.nearest_faces(
        conn,
        embedding,
        limit=CANDIDATES,
        ef_search=max(settings.hnsw_ef_search, CANDIDATES),
        exact=filtered and gallery_faces <= settings.exact_search_max,
        model=model,
        **filters,
    )
    if not rows:
        raise FaceLibError(E.LIBRARY_EMPTY)
    best = rows[0]  # ordered by distance: the first row is the best face of the best person
    score = score_from_distance(float(best["distance"]), model)
    is_match, fmr = match_decision(float(best["distance"]), gallery_faces, meta, settings, model)
    data: dict[str, Any] = {
        "model": model,
        "isMatch": "true" if is_match else "false",
        "score": format_score(score),
        "galleryFaces": gallery_faces,
        "falseMatchRate": f"{fmr:.3g}",
    }
    if is_match:
        # stored as a reference: the person's details are filled in when the result is read
        # (render_result), so job rows and callback rows hold no idNum or name
        data[PERSON_REF] = best["person_id"]
    return data


def verification_result(
    conn: psycopg.Connection, settings: Settings, embedding: np.ndarray, job: dict[str, Any]
) -> dict[str, Any]:
    """1:1: the probe against one person's own faces; the score keeps its per-comparison FAR."""
    model = deciding_model(settings)
    meta = job["request_meta"] or {}
    person_id = meta.get("personId")
    distance = (
        None
        if person_id is None
        else db.search.person_distance(conn, int(person_id), embedding, model=model)
    )
    conceal = bool(meta.get("concealAbsence"))
    if distance is None:
        if conceal:  # the caller may not learn whether the idNum is enrolled
            return {"isMatch": "false", "model": model}
        # also a person enrolled before the deciding model was enabled and not re-embedded
        raise FaceLibError(E.PERSON_NOT_FOUND, data={"model": model})
    score = score_from_distance(distance, model)
    threshold = max(float(meta.get("threshold") or 0.0), decision_floor(meta, settings))
    if score < threshold:
        # without person:read a no-match carries no score: it would tell "enrolled, not this
        # face" from "not enrolled"
        if conceal:
            return {"isMatch": "false", "model": model}
        return {"isMatch": "false", "score": format_score(score), "model": model}
    return {"isMatch": "true", "score": format_score(score), "model": model}


def duplicate_of(
    conn: psycopg.Connection, settings: Settings, embedding: np.ndarray, person_id: int
) -> float | None:
    """Score of the closest face of *another* person, if it is a credible duplicate identity,
    by the deciding model (`embedding` is that model's vector of the new face).

    Credible means score >= FACELIB_DUPLICATE_SCORE (80) *and* gallery-aware: a new face is
    compared with every enrolled face, so with N faces a stranger reaches score s somewhere
    with probability 1 - (1 - FAR(s))^N. Flagging only when that is <= FACELIB_GALLERY_TARGET
    keeps the false-alarm rate of the fraud check flat as the library grows (at a fixed 80,
    7.5% of distinct LFW people were flagged once 3,959 were enrolled).
    """
    model = deciding_model(settings)
    rows = db.search.nearest_faces(
        conn,
        embedding,
        limit=1,
        ef_search=settings.hnsw_ef_search,
        exclude_person=person_id,
        model=model,
    )
    if not rows:
        return None
    distance = float(rows[0]["distance"])
    score = score_from_distance(distance, model)
    if score < settings.duplicate_score:
        return None
    if false_match_rate(distance, db.search.library_size(conn), model) > settings.gallery_target:
        return None
    return score


def render_result(conn: psycopg.Connection, settings: Settings, result: dict) -> dict:
    """The client-facing data of a stored result: person details filled in from `persons`."""
    data = dict(result or {})
    person_id = data.pop(PERSON_REF, None)
    if person_id is None:
        return data
    person = db.persons.get_person(conn, person_id)
    if person is None:  # erased since: the match no longer names anyone
        data["isMatch"] = "false"
        return data
    return {
        "idNum": db.persons.decrypt_id_num(settings, person),
        "customerID": person["customer_id"],
        "name": person["name"],
        "personType": person["person_type"],
        **data,
    }
