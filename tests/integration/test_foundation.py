"""The spine: schema and migrations, pgvector HNSW search, tokens, readiness, compose file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import yaml

from shared.db.migrate import apply_migrations
from tests.conftest import ROOT, AppClient, Services, Stack, new_client

REG = "/tech/ai/face/faceLib/person/reg"
RECONG = "/tech/ai/face/faceLib/person/recong"


def test_migrations_are_idempotent_and_everything_is_commented(services: Services) -> None:
    assert apply_migrations(services.database_url) == []  # second run: nothing to do
    with services.db() as conn:
        assert conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        tables = conn.execute(
            "SELECT c.relname, obj_description(c.oid) AS comment FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
        ).fetchall()
        names = {t["relname"] for t in tables}
        assert {"persons", "faces", "jobs", "api_clients", "api_tokens"} <= names
        assert {"callback_deliveries", "callback_attempts", "job_inputs"} <= names
        assert all(t["comment"] for t in tables), [t["relname"] for t in tables if not t["comment"]]
        uncommented = conn.execute(
            "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            " AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
            " AND col_description(c.oid, a.attnum) IS NULL AND c.relname <> 'schema_migrations'"
        ).fetchall()
        assert uncommented == []


def test_pgvector_cosine_search_with_hnsw_orders_by_distance(db: psycopg.Connection) -> None:
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(500, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    query = vecs[3] + 0.05 * rng.normal(size=128).astype(np.float32)
    db.execute("CREATE TEMP TABLE v (id int PRIMARY KEY, e vector(128))")
    with db.cursor() as cur:
        cur.executemany("INSERT INTO v VALUES (%s, %s)", [(i, v) for i, v in enumerate(vecs)])
    db.execute("CREATE INDEX v_hnsw ON v USING hnsw (e vector_cosine_ops)")
    db.execute("ANALYZE v")
    db.execute("SET LOCAL hnsw.ef_search = 100")
    got = [r["id"] for r in db.execute("SELECT id FROM v ORDER BY e <=> %s LIMIT 5", (query,))]
    cos = vecs @ (query / np.linalg.norm(query))
    expected = list(np.argsort(-cos)[:5])
    assert got[0] == 3
    assert got == expected


def test_faces_table_has_its_hnsw_cosine_index(db: psycopg.Connection) -> None:
    """The index exists with the cosine operator class (whether the planner uses it for a given
    query is its choice: search results are tested elsewhere, not plans)."""
    row = db.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'faces'"
        " AND indexname = 'faces_embedding_hnsw'"
    ).fetchone()
    assert row is not None
    # halfvec_cosine_ops since sql/0009
    assert "hnsw" in row["indexdef"] and "cosine_ops" in row["indexdef"]


def test_requests_without_or_with_bad_token_are_refused(api: AppClient) -> None:
    body = {"faceImage": {"data": "aGVsbG8="}}
    r = api.post(RECONG, None, body)
    assert r.status_code == 401 and r.json() == {
        "errcode": 1001,
        "errmsg": r.json()["errmsg"],
        "data": {},
    }
    assert "token" in r.json()["errmsg"]
    assert api.post(RECONG, "flt_not-a-real-token", body).json()["errcode"] == 1002
    good = api.client()
    forged = good["token"][:-8] + ("A" if good["token"][-8] != "A" else "B") + good["token"][-7:]
    assert api.post(RECONG, forged, body).json()["errcode"] == 1002
    assert api.post(REG, f"Bearer {good['token']}x", body).json()["errcode"] == 1002


def test_expired_and_revoked_tokens_are_refused(api: AppClient, db: psycopg.Connection) -> None:
    from shared.db import clients as clients_repo

    c = api.client()
    body = {"faceImage": {"data": "!!!"}}
    # valid token: gets past auth to validation (invalid base64)
    assert api.post(RECONG, c["token"], body).json()["errcode"] == 3002
    db.execute(
        "UPDATE api_tokens SET expires_at = %s WHERE client_id = %s",
        (datetime.now(UTC) - timedelta(seconds=1), c["id"]),
    )
    r = api.post(RECONG, c["token"], body)
    assert (r.status_code, r.json()["errcode"]) == (401, 1003)
    c2 = api.client()
    assert clients_repo.revoke_token(db, c2["token"])
    assert api.post(RECONG, c2["token"], body).json()["errcode"] == 1002


def test_token_hash_only_is_stored(db: psycopg.Connection) -> None:
    c = new_client(db)
    rows = db.execute(
        "SELECT token_hash, token_prefix FROM api_tokens WHERE client_id = %s", (c["id"],)
    ).fetchall()
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) != c["token"].encode()
    assert len(bytes(rows[0]["token_hash"])) == 32 and c["token"].startswith(
        rows[0]["token_prefix"]
    )


def test_readiness_reports_database_broker_and_workers(stack: Stack) -> None:
    r = stack.get("/health/ready", None)
    assert r.status_code == 200
    checks = r.json()["data"]["checks"]
    assert checks["database"] == "ok" and checks["broker"] == "ok"
    assert checks["workers"].endswith("live")
    assert stack.get("/health/live", None).json()["data"] == {"status": "alive"}


def test_unknown_route_and_method_get_the_envelope(api: AppClient) -> None:
    r = api.get("/tech/ai/face/faceLib/person/nope", None)
    assert r.status_code == 404 and r.json()["errcode"] == 2006
    r = api.get(REG, None)
    assert r.status_code == 405 and r.json()["errcode"] == 2007


def test_compose_file_names_the_services_and_settings_the_code_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker", "beat"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg17")
    assert "appendonly" in " ".join(map(str, services["redis"]["command"]))
    assert "noeviction" in " ".join(map(str, services["redis"]["command"]))
    assert services["api"]["build"] == services["worker"]["build"]  # one image
    for name in ("api", "worker"):
        svc = services[name]
        assert "healthcheck" in svc
        deps = svc["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    example = (ROOT / ".env.example").read_text()
    import re

    settings_src = (ROOT / "shared" / "settings.py").read_text()
    read_by_code = set(re.findall(r'"((?:FACELIB|DATABASE|REDIS)_[A-Z0-9_]+)"', settings_src))
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.M))
    assert read_by_code <= documented, read_by_code - documented
    env = services["api"]["environment"]
    required = {"DATABASE_URL", "REDIS_URL", "FACELIB_INDEX_KEY", "FACELIB_ENCRYPTION_KEY"}
    assert required <= set(env)
    # compose sets nothing the code ignores (prometheus_client itself reads its multiprocess dir)
    assert set(env) - {"PROMETHEUS_MULTIPROC_DIR"} <= read_by_code
    for name in ("api", "worker", "callbacks-worker", "beat", "migrate"):
        assert services[name]["env_file"] == [".env"], name  # every .env setting reaches the app
    assert "--queues" in services["callbacks-worker"]["command"]
    assert "callbacks" in services["callbacks-worker"]["command"]


def test_an_error_after_the_view_is_answered_for_what_it_is(services: Services) -> None:
    """An exception in an after-request hook (the rate limiter's headers when Redis has just
    died) reaches Flask wrapped in a 500: it is answered 9001 for a backing service and 9000
    otherwise, never 2002 as if the client's request were invalid."""
    import redis

    from api import create_app

    app = create_app()
    failure: dict[str, Exception] = {}

    @app.after_request
    def _fail(resp):  # registered last, so it runs first
        raise failure["exc"]

    client = app.test_client()
    failure["exc"] = redis.ConnectionError("Connection refused")
    r = client.get("/health/live")
    assert (r.status_code, r.get_json()["errcode"]) == (503, 9001)
    failure["exc"] = ValueError("a bug")
    r = client.get("/health/live")
    assert (r.status_code, r.get_json()["errcode"]) == (500, 9000)
