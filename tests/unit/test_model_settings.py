"""Settings of the optional models, quality control levels and the photo cipher (issue 15)."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag

from shared import crypto
from shared.settings import SettingsError, load_settings
from worker.engine.config import (
    HIGH_MAX_BLUR,
    HIGH_MAX_POSE,
    QUALITY_LEVELS,
    EngineConfig,
    gates_for,
)


def test_defaults_are_dlib_only(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.models, s.match_model, s.keep_enrolment_photos) == ((), "dlib", False)


def test_the_deciding_model_is_always_computed(env: pytest.MonkeyPatch) -> None:
    env.setenv("FACELIB_MATCH_MODEL", "MobileFaceNet")
    s = load_settings()
    assert (s.match_model, s.models) == ("mobilefacenet", ("mobilefacenet",))


def test_unknown_models_stop_the_process(env: pytest.MonkeyPatch) -> None:
    env.setenv("FACELIB_MODELS", "mobilefacenet,arcface")
    with pytest.raises(SettingsError, match="FACELIB_MODELS: unknown model 'arcface'"):
        load_settings()
    env.setenv("FACELIB_MODELS", "")
    env.setenv("FACELIB_MATCH_MODEL", "arcface")
    with pytest.raises(SettingsError, match="FACELIB_MATCH_MODEL"):
        load_settings()


def test_quality_levels_default_to_todays_gates() -> None:
    cfg = EngineConfig()
    # no level: registration every gate (NORMAL), recognition out of frame and size (LOW)
    assert gates_for(cfg, "register", None) == gates_for(cfg, "register", "NORMAL")
    assert gates_for(cfg, "recognize", None) == gates_for(cfg, "recognize", "LOW")
    none = gates_for(cfg, "register", "NONE")
    assert (none.min_face_px, none.max_out_of_frame, none.max_pose, none.max_blur) == (
        None,
        None,
        None,
        None,
    )
    low = gates_for(cfg, "register", "LOW")
    assert (low.min_face_px, low.max_pose, low.max_blur) == (cfg.min_face_px, None, None)
    high = gates_for(cfg, "recognize", "HIGH")
    assert high.min_face_px > cfg.min_face_px
    assert (high.max_pose, high.max_blur) == (HIGH_MAX_POSE, HIGH_MAX_BLUR)
    assert HIGH_MAX_POSE < cfg.max_pose and HIGH_MAX_BLUR < cfg.max_blur
    assert QUALITY_LEVELS == ("NONE", "LOW", "NORMAL", "HIGH")
    with pytest.raises(ValueError, match="qualityControl"):
        gates_for(cfg, "recognize", "low")


def test_photo_cipher_is_bound_to_its_face() -> None:
    key = os.urandom(32)
    blob = crypto.encrypt_bytes(key, b"\xff\xd8photo", aad=b"face_photos:7")
    assert b"photo" not in blob
    assert crypto.decrypt_bytes(key, blob, aad=b"face_photos:7") == b"\xff\xd8photo"
    with pytest.raises(InvalidTag):  # moved to another face's row, it does not decrypt
        crypto.decrypt_bytes(key, blob, aad=b"face_photos:8")
