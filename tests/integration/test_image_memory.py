"""The audit's 16-bit 4990 x 4990 PNG against the running service: the upload endpoint (API
process) and a registration (worker) answer 3004 before decoding, and both processes live on."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from tests.conftest import Stack, new_id_num
from tests.helpers import REG, reg_body
from tests.unit.test_imaging_memory import sixteen_bit_png


@pytest.fixture(scope="module")
def png() -> bytes:
    return sixteen_bit_png()


@pytest.fixture(scope="module")
def uploader(stack: Stack) -> dict[str, Any]:
    return stack.client(scopes=["face:register", "file:write"])


def test_upload_of_the_16_bit_png_is_refused(
    stack: Stack, uploader: dict[str, Any], png: bytes
) -> None:
    for _ in range(6):  # the audit's six uploads
        r = requests.post(
            f"{stack.api_url}/tech/file/upload",
            files={"file": ("i16.png", png, "image/png")},
            headers={"Authorization": uploader["token"]},
            timeout=60,
        )
        assert (r.status_code, r.json()["errcode"]) == (422, 3004), r.text
        assert "4990x4990 I;16" in r.json()["errmsg"]
    assert stack.get("/health/ready", None).status_code == 200


def test_registration_with_the_16_bit_png_fails_with_3004(
    stack: Stack, uploader: dict[str, Any], png: bytes
) -> None:
    body = reg_body(new_id_num(), base64.b64encode(png).decode())
    r = stack.post(REG, uploader["token"], body)
    assert r.json()["errcode"] == 3004, r.text
    assert r.json()["data"] == {"ok": "false"}
