"""Fixtures of the unit tests."""

from __future__ import annotations

import base64
import os

import pytest


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment of a settings test: the required variables set, every other FACELIB_*
    variable removed (the integration stack may have exported some), to be set by the test."""
    for name in [n for n in os.environ if n.startswith("FACELIB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("REDIS_URL", "redis://localhost/0")
    monkeypatch.setenv("FACELIB_INDEX_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("FACELIB_ENCRYPTION_KEY", base64.b64encode(b"k" * 32).decode())
    return monkeypatch
