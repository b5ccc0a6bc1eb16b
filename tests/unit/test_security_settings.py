"""Settings of the security audit (issue 13): limits that do not parse stop the process, old
encryption keys by id, the bind address, and the JSON depth scan of the validation layer."""

from __future__ import annotations

import base64
import os

import pytest

from api.schemas import json_depth, string_problem
from shared.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    "name", ["FACELIB_RATE_LIMIT", "FACELIB_UNAUTH_RATE_LIMIT", "FACELIB_TOKEN_KEY_RATE_LIMIT"]
)
def test_a_rate_limit_that_does_not_parse_stops_the_process(
    env: pytest.MonkeyPatch, name: str
) -> None:
    env.setenv(name, "lots/please")
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_old_keys_by_id_and_the_current_one(env: pytest.MonkeyPatch) -> None:
    old = os.urandom(32)
    env.setenv("FACELIB_ENCRYPTION_KEY_ID", "k2")
    env.setenv("FACELIB_ENCRYPTION_KEYS", f"k1:{base64.b64encode(old).decode()}")
    s = load_settings()
    assert s.encryption_keys == {"k1": old, "k2": b"k" * 32}
    env.setenv("FACELIB_ENCRYPTION_KEYS", f"k2:{base64.b64encode(old).decode()}")
    with pytest.raises(SettingsError, match="another key"):
        load_settings()
    env.setenv("FACELIB_ENCRYPTION_KEYS", "k1:not-base64!")
    with pytest.raises(SettingsError, match="k1"):
        load_settings()


def test_bind_defaults_to_loopback(env: pytest.MonkeyPatch) -> None:
    assert load_settings().bind_host == "127.0.0.1"
    env.setenv("FACELIB_BIND", "0.0.0.0")  # noqa: S104 - the documented opt-in
    assert load_settings().bind_host == "0.0.0.0"  # noqa: S104


def test_json_depth_skips_strings_and_counts_nesting() -> None:
    assert json_depth(b'{"a": "[[[[[", "b": [[1]]}') == 3
    assert json_depth(b'["\\"[[[", {}]') == 2
    assert json_depth(b"[" * 10_000 + b"]" * 10_000) == 10_000
    assert json_depth(b"") == 0


def test_strings_postgres_cannot_store_are_named() -> None:
    assert string_problem("ok 张三") is None
    assert "NUL" in (string_problem("a\x00b") or "")
    assert "surrogate" in (string_problem("\ud800") or "")
