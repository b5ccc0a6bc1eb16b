"""Pure code: ID numbers, tokens and crypto, the score map, the errcode table and its docs."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pytest

from shared import crypto
from shared.errors import ERRCODES, E, FaceLibError
from shared.idnum import check_character, is_valid_id_num, make_id_num
from shared.logs import redact
from shared.score import (
    calibration,
    false_match_rate,
    far_from_distance,
    far_from_score,
    format_score,
    gallery_false_match_rate,
    score_from_distance,
)
from tests.conftest import ROOT


def test_id_numbers_follow_gb11643() -> None:
    assert is_valid_id_num("11010519491231002X")  # the standard's own example
    assert not is_valid_id_num("110105194912310021")  # wrong check character
    assert not is_valid_id_num("11010519491331002X")  # month 13
    assert not is_valid_id_num("1101051949123100")  # too short
    assert not is_valid_id_num("11010520991231002X", today=date(2026, 1, 1))  # born in the future
    made = make_id_num("610102", date(1990, 2, 28), 19)
    assert is_valid_id_num(made) and made[-1] == check_character(made[:17])


def test_tokens_are_random_prefixed_and_checksummed() -> None:
    a, b = crypto.new_token(), crypto.new_token()
    assert a != b and a.startswith("flt_") and len(a) >= 40
    assert crypto.token_well_formed(a)
    assert not crypto.token_well_formed(a[:-1] + ("0" if a[-1] != "0" else "1"))
    assert not crypto.token_well_formed("Bearer " + a)


def test_id_num_encryption_round_trip_and_binding() -> None:
    key = bytes(range(32))
    blob = crypto.encrypt(key, "11010519491231002X", aad=b"job-1")
    assert b"11010519491231002X" not in blob
    assert crypto.decrypt(key, blob, aad=b"job-1") == "11010519491231002X"
    with pytest.raises(Exception):  # noqa: B017 - any authentication failure
        crypto.decrypt(key, blob, aad=b"job-2")
    assert (
        crypto.blind_index(key, "x") == crypto.blind_index(key, "x") != crypto.blind_index(key, "y")
    )
    assert crypto.mask_id_num("610102199001010019") == "610************019"


def test_score_is_monotone_and_states_the_false_accept_rate() -> None:
    scores = [score_from_distance(d) for d in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == 100.0 and 0.0 <= scores[-1] < 40
    assert far_from_score(70) == pytest.approx(1e-3)
    assert far_from_score(80) == pytest.approx(1e-4)
    assert gallery_false_match_rate(70, 1) == pytest.approx(1e-3)
    assert gallery_false_match_rate(70, 1000) == pytest.approx(1 - (1 - 1e-3) ** 1000)
    assert gallery_false_match_rate(80, 100) < gallery_false_match_rate(80, 10_000)
    assert format_score(82.44) == "82.4"


def test_false_match_rate_extends_past_the_score_ceiling() -> None:
    """Gallery decisions for libraries over 10,000 faces need FARs below score 100's 1e-6."""
    cal = calibration()
    d100 = float(cal["_d"][cal["_s"] >= 100].max())
    d80 = float(np.interp(80.0, cal["_s"][::-1], cal["_d"][::-1]))
    assert far_from_distance(d80) == pytest.approx(1e-4, rel=1e-6)
    assert far_from_distance(d100) == pytest.approx(1e-6, rel=1e-6)
    closer = [far_from_distance(d100 * f) for f in (0.9, 0.6, 0.3)]
    assert closer == sorted(closer, reverse=True) and closer[-1] < 1e-7
    # a near-identical face stays a credible match in a library of 100,000 faces ...
    assert false_match_rate(0.3 * d100, 100_000) < 0.01
    # ... while a face at the score-80 distance does not
    assert false_match_rate(d80, 100_000) > 0.99


def test_every_errcode_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (\d{1,4}) \| \d{3} \|", readme, re.M)}
    assert documented == set(ERRCODES)
    for code, err in ERRCODES.items():
        row = re.search(rf"^\| {code} \| (\d{{3}}) \|", readme, re.M)
        assert row and int(row.group(1)) == err.http_status, code


def test_errcodes_are_unique_and_grouped() -> None:
    codes = [v.code for k, v in vars(E).items() if not k.startswith("_")]
    assert len(codes) == len(set(codes))
    assert all(c == 0 or 1000 <= c < 10000 for c in codes)
    err = FaceLibError(E.NO_FACE, detail="x")
    assert err.to_dict() == {"errcode": 4001, "errmsg": "no face found in the image: x", "data": {}}


def test_log_redaction_catches_tokens_and_id_numbers() -> None:
    token = crypto.new_token()
    line = f"Authorization: {token} idNum 11010519491231002X"
    out = redact(line)
    assert token not in out and "11010519491231002X" not in out
