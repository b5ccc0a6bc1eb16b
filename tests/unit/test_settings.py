"""Settings read in one place (issue 14): FACELIB_HOME resolves one way for everything that
lives under it, the settings `facelib` needs before the servers are up, the fetch allowlist
checked by the parser the fetch policy uses, and one false-match formula."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shared.models import models_home
from shared.safe_fetch import FetchPolicy
from shared.score import false_match_rate, gallery_false_match_rate
from shared.settings import (
    SettingsError,
    facelib_home,
    load_settings,
    pg_memory_mb,
    redis_port,
)


def test_facelib_home_is_absolute_from_the_working_directory(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env.chdir(tmp_path)
    assert facelib_home() == tmp_path / "var"
    s = load_settings()
    assert s.home == tmp_path / "var"
    assert Path(s.files_dir) == tmp_path / "var" / "files"
    assert models_home() == tmp_path / "var" / "models"
    env.setenv("FACELIB_HOME", "data/home")
    s = load_settings()
    assert s.home == facelib_home() == tmp_path / "data" / "home"
    assert Path(s.files_dir) == tmp_path / "data" / "home" / "files"
    assert models_home() == tmp_path / "data" / "home" / "models"
    env.setenv("FACELIB_FILES_DIR", str(tmp_path / "elsewhere"))
    assert load_settings().files_dir == str(tmp_path / "elsewhere")


def test_settings_the_cli_reads_before_the_servers_are_up(env: pytest.MonkeyPatch) -> None:
    env.delenv("DATABASE_URL")  # what `facelib up` reads first works without it
    assert (redis_port(), pg_memory_mb()) == (6390, 0)
    env.setenv("FACELIB_REDIS_PORT", "6411")
    env.setenv("FACELIB_PG_MEMORY_MB", "512")
    assert (redis_port(), pg_memory_mb()) == (6411, 512)
    env.setenv("FACELIB_REDIS_PORT", "six")
    with pytest.raises(SettingsError, match="FACELIB_REDIS_PORT must be an integer"):
        redis_port()
    env.setenv("DATABASE_URL", "postgresql://localhost/x")
    env.setenv("FACELIB_REDIS_PORT", "6411")
    env.setenv("FACELIB_WORKER_CONCURRENCY", "3")
    env.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/prom")
    s = load_settings()
    assert (s.redis_port, s.pg_memory_mb, s.worker_concurrency) == (6411, 512, 3)
    assert s.prometheus_multiproc_dir == "/tmp/prom"


def test_fetch_allowlist_is_checked_by_the_fetch_policy_parser(env: pytest.MonkeyPatch) -> None:
    env.setenv("FACELIB_FETCH_ALLOWLIST", " Images.Bank.Intranet. ,10.20.0.0/16,,[::1]")
    s = load_settings()
    assert s.fetch_allowlist == ("images.bank.intranet", "10.20.0.0/16", "[::1]")
    policy = FetchPolicy.from_settings(s)
    assert policy.allow_hosts == {"images.bank.intranet"}
    assert [str(n) for n in policy.allow_networks] == ["10.20.0.0/16", "::1/128"]
    env.setenv("FACELIB_FETCH_ALLOWLIST", "ok.example,bad host")
    with pytest.raises(SettingsError, match="FACELIB_FETCH_ALLOWLIST: 'bad host'"):
        load_settings()


def test_one_choice_reader_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("FACELIB_FILE_STORE", "S3")
    assert load_settings().file_store == "s3"
    env.setenv("FACELIB_FILE_STORE", "ftp")
    with pytest.raises(SettingsError, match="FACELIB_FILE_STORE must be one of local, s3"):
        load_settings()


def test_both_false_match_rates_are_one_formula() -> None:
    # score 70 is FAR 1e-3 by definition: a gallery of N faces, 1 - (1 - 1e-3)^N
    assert gallery_false_match_rate(70, 500) == pytest.approx(1 - (1 - 1e-3) ** 500)
    assert gallery_false_match_rate(70, 0) == false_match_rate(0.5, 0) == 0.0
    assert gallery_false_match_rate(0, 10) == 1.0  # FAR 1 (and beyond): certain
    assert math.isclose(false_match_rate(2.0, 1), 1.0)
