"""Tokens, scopes, client isolation, rate limits, back-pressure, audit, metrics, OpenAPI."""

from __future__ import annotations

import time

import psycopg
import requests

from tests.conftest import AppClient, Stack, face_b64, new_client, new_id_num
from tests.helpers import TASK, eventually

REG = "/tech/ai/face/faceLib/person/reg"
RECONG = "/tech/ai/face/faceLib/person/recong"
TOKEN = "/tech/ai/core/token"


def _recong(image: str, **extra: object) -> dict:
    return {"faceImage": {"data": image}, **extra}


def test_token_issue_use_expire_refuse(api: AppClient, db: psycopg.Connection) -> None:
    c = api.client(scopes=["face:recognize"])
    r = api.post(TOKEN, None, {"clientKey": c["client_key"], "clientSecret": c["client_secret"]})
    env = r.json()
    assert env["errcode"] == 0, env
    token = env["data"]["token"]
    assert token.startswith("flt_") and env["data"]["expiresIn"] > 0
    assert env["data"]["tokenType"] == "Bearer"
    body = _recong("!!!")  # invalid base64: proves we got past authentication
    assert api.post(RECONG, token, body).json()["errcode"] == 3002
    assert api.post(RECONG, f"Bearer {token}", body).json()["errcode"] == 3002
    row = db.execute(
        "SELECT last_used_at FROM api_tokens WHERE token_prefix = %s", (token[:8],)
    ).fetchone()
    assert row["last_used_at"] is not None
    db.execute(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE token_prefix = %s",
        (token[:8],),
    )
    assert api.post(RECONG, token, body).json()["errcode"] == 1003
    bad = api.post(TOKEN, None, {"clientKey": c["client_key"], "clientSecret": "wrong"})
    assert (bad.status_code, bad.json()["errcode"]) == (401, 1005)
    missing = api.post(TOKEN, None, {"clientKey": c["client_key"]})
    assert missing.json()["errcode"] == 2001 and missing.json()["data"]["field"] == "clientSecret"


def test_revocation_takes_effect_at_once(api: AppClient, db: psycopg.Connection) -> None:
    from shared.db import clients as clients_repo

    c = api.client()
    body = _recong("!!!")
    assert api.post(RECONG, c["token"], body).json()["errcode"] == 3002
    assert clients_repo.revoke_token(db, c["token"])
    assert api.post(RECONG, c["token"], body).json()["errcode"] == 1002


def test_each_route_requires_its_scope(api: AppClient) -> None:
    recognise_only = api.client(scopes=["face:recognize"])
    r = api.post(REG, recognise_only["token"], {"idNum": new_id_num()})
    assert (r.status_code, r.json()["errcode"]) == (403, 1004)
    register_only = api.client(scopes=["face:register"])
    r = api.post(RECONG, register_only["token"], _recong("!!!"))
    assert (r.status_code, r.json()["errcode"]) == (403, 1004)
    admin = api.client(scopes=["admin"])
    assert api.post(RECONG, admin["token"], _recong("!!!")).json()["errcode"] == 3002


def test_clients_see_only_their_own_tasks_and_callbacks(stack: Stack) -> None:
    a, b = stack.client(), stack.client()
    body = _recong(face_b64("obama_2.jpg"), callbackUrl="http://127.0.0.1:9/none")
    body["async"] = True
    task = stack.post(RECONG, a["token"], body).json()["data"]["taskId"]
    assert stack.get(f"{TASK}{task}", a["token"]).json()["errcode"] == 0
    assert stack.get(f"{TASK}{task}", b["token"]).json()["errcode"] == 6001
    items = eventually(
        lambda: stack.get("/tech/ai/face/faceLib/callbacks", a["token"]).json()["data"]["items"],
        what="the callback is listed",
    )
    assert task in {i["taskId"] for i in items}
    others = stack.get("/tech/ai/face/faceLib/callbacks", b["token"]).json()["data"]["items"]
    assert task not in {i["taskId"] for i in others}


def test_rate_limit_answers_its_errcode_with_retry_after(api: AppClient) -> None:
    c = api.client(rate_limit="3/minute")
    codes = [api.post(RECONG, c["token"], _recong("!!!")) for _ in range(4)]
    assert [r.json()["errcode"] for r in codes[:3]] == [3002, 3002, 3002]
    limited = codes[3]
    assert (limited.status_code, limited.json()["errcode"]) == (429, 7001)
    assert int(limited.headers["Retry-After"]) > 0
    other = api.client(rate_limit="3/minute")  # the limit is per client, not per IP
    assert api.post(RECONG, other["token"], _recong("!!!")).json()["errcode"] == 3002


def test_full_queue_refuses_async_submissions(stack: Stack) -> None:
    c = stack.client()
    body = _recong(face_b64("obama_2.jpg"))
    body["async"] = True
    with stack.extra_api(FACELIB_QUEUE_MAX_DEPTH="-1") as url:
        r = requests.post(
            f"{url}{RECONG}", json=body, headers={"Authorization": c["token"]}, timeout=30
        )
    assert (r.status_code, r.json()["errcode"]) == (503, 7002)


def test_audit_has_one_row_per_request_without_raw_pii(stack: Stack) -> None:
    c = stack.client()
    id_num = new_id_num()
    body = {
        "idNum": id_num,
        "name": "审计测试",
        "personType": "normal",
        "faceImage": {"data": face_b64("obama_2.jpg")},
    }
    r1 = stack.post(REG, c["token"], body, headers={"X-Request-Id": "audit-req-1"})
    r2 = stack.post(RECONG, c["token"], _recong("!!!"), headers={"X-Request-Id": "audit-req-2"})
    assert r1.json()["errcode"] == 0 and r2.json()["errcode"] == 3002
    time.sleep(0.2)
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT * FROM audit_view WHERE request_id IN ('audit-req-1', 'audit-req-2')"
            " ORDER BY id"
        ).fetchall()
        assert [(r["endpoint"], r["errcode"]) for r in rows] == [
            (REG, 0),
            (RECONG, 3002),
        ]
        assert rows[0]["client"] == c["name"] and str(rows[0]["task_id"]) == r1.headers["X-Task-Id"]
        # enrolled: the view names the person by id, never by the idNum's blind index
        assert rows[0]["person_ref"].startswith("p:")
        blob = " ".join(str(v) for r in rows for v in r.values())
        assert id_num not in blob and "审计测试" not in blob
        # append-only
        import psycopg

        try:
            conn.execute("DELETE FROM audit_log WHERE request_id = 'audit-req-1'")
            deleted = True
        except psycopg.errors.RaiseException:
            deleted = False
        assert not deleted


def test_async_submission_commits_its_audit_row_with_the_job(stack: Stack) -> None:
    """An async job, its inputs and its audit row are one commit: the row is there as soon as
    the answer is, and an idempotent repeat (200) and a refused repeat (2005) get one row each."""
    c = stack.client()
    body = _recong(face_b64("obama_2.jpg"), requestId="audit-async-1")
    body["async"] = True
    r1 = stack.post(RECONG, c["token"], body, headers={"X-Request-Id": "audit-async-a"})
    r2 = stack.post(RECONG, c["token"], body, headers={"X-Request-Id": "audit-async-b"})
    other = {**body, "threshold": 90}
    r3 = stack.post(RECONG, c["token"], other, headers={"X-Request-Id": "audit-async-c"})
    task = r1.json()["data"]["taskId"]
    assert (r1.status_code, r2.status_code) == (202, 200)
    assert r2.json()["data"]["taskId"] == task and r3.json()["errcode"] == 2005
    # the refused repeat's row is committed by the after-request hook, before its answer is sent
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT request_id, errcode, http_status, task_id, client_id, endpoint"
            " FROM audit_log WHERE request_id LIKE 'audit-async-%' ORDER BY id"
        ).fetchall()
        job = conn.execute("SELECT status FROM jobs WHERE id = %s", (task,)).fetchone()
    assert job is not None
    assert [(r["request_id"], r["errcode"], r["http_status"]) for r in rows] == [
        ("audit-async-a", 0, 202),
        ("audit-async-b", 0, 200),
        ("audit-async-c", 2005, 409),
    ]
    assert [str(r["task_id"]) for r in rows[:2]] == [task, task]
    assert {r["client_id"] for r in rows} == {c["id"]}
    assert {r["endpoint"] for r in rows} == {RECONG}


def test_metrics_expose_requests_jobs_queue_and_callbacks(stack: Stack) -> None:
    c = stack.client()
    stack.post(RECONG, c["token"], _recong(face_b64("obama_2.jpg")))
    scraper = stack.client(scopes=["metrics:read"])  # /metrics needs it (issue 13)
    text = stack.get("/metrics", scraper["token"]).text
    for series in (
        "facelib_http_requests_total",
        "facelib_http_request_duration_seconds_bucket",
        "facelib_jobs_total",
        "facelib_job_embed_seconds_bucket",
        "facelib_job_queue_wait_seconds_count",
        "facelib_queue_depth",
        "facelib_callback_deliveries",
    ):
        assert series in text, series
    assert 'route="/tech/ai/face/faceLib/person/recong"' in text


def test_openapi_spec_lists_endpoints_and_every_errcode(api: AppClient) -> None:
    from shared.errors import ERRCODES

    spec = api.get("/openapi.json", None).json()
    assert spec["openapi"].startswith("3.")
    assert "/tech/ai/face/faceLib/person/reg" in spec["paths"]
    assert "/tech/ai/face/faceLib/person/recong" in spec["paths"]
    # every route of the app is documented
    documented = {
        p.replace("{taskId}", "<task_id>").replace("{path}", "<path:path>") for p in spec["paths"]
    }
    for route in ("person/verify", "person/get", "person/delete", "library/list"):
        assert f"/tech/ai/face/faceLib/{route}" in documented, route
    assert "/tech/file/upload" in documented
    reg_schema = spec["components"]["schemas"]["RegisterRequest"]
    assert {"idNum", "name", "personType", "faceImage"} <= set(reg_schema["required"])
    assert {e["errcode"] for e in spec["components"]["x-errcodes"]} == set(ERRCODES)
    page = api.get("/docs", None)
    assert page.status_code == 200 and "4001" in page.text and "RegisterRequest" in page.text


def test_callback_secret_rotation_overlaps_then_finishes(db: psycopg.Connection, capsys) -> None:
    from shared.cli import main

    def secrets_of(client: dict) -> dict:
        return db.execute(
            "SELECT callback_secret, callback_secret_previous FROM api_clients WHERE id = %s",
            (client["id"],),
        ).fetchone()

    client = new_client(db)
    assert main(["client", "rotate-callback-secret", client["name"]]) == 0
    new_secret = capsys.readouterr().out.split("secret: ")[1].split()[0]
    row = secrets_of(client)
    assert row["callback_secret"] == new_secret
    assert row["callback_secret_previous"] == client["callback_secret"]  # both sign meanwhile

    assert main(["client", "rotate-callback-secret", client["name"], "--finish"]) == 0
    row = secrets_of(client)
    assert row["callback_secret"] == new_secret
    assert row["callback_secret_previous"] is None
