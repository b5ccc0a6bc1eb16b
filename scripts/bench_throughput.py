"""End-to-end worker throughput: registration jobs/s through Redis + Celery + Postgres.

Starts embedded Postgres+pgvector and Redis in a temporary directory, then for each embedding
backend and worker count: a Celery worker, a burst of N async registrations of real photos
(submitted straight to the job queue, as the API does), and the time until every job is done.
Prints a Markdown table with ratios against the dlib backend at the same worker count.

    uv run python scripts/bench_throughput.py --jobs 60 --backends dlib,onnx --workers 1,2
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def photos(max_side: int = 800) -> list[bytes]:
    from PIL import Image, ImageOps

    out = []
    for name in ("obama_1.jpg", "biden_1.jpg", "kit_harington_1.jpeg", "rose_leslie_2.jpg"):
        img = ImageOps.exif_transpose(Image.open(ROOT / "tests/fixtures/faces" / name))
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


STAGES: dict[tuple[str, int], dict[str, float]] = {}


def run(backend: str, workers: int, jobs: int, env: dict[str, str]) -> float:
    from shared import crypto, db
    from shared.cli import worker_command
    from shared.db import transaction
    from shared.idnum import make_id_num
    from shared.jobs import send_job
    from shared.settings import get_settings

    s = get_settings()
    images = photos()
    proc_env = {**env, "FACELIB_EMBEDDING_BACKEND": backend}
    log = open(Path(env["FACELIB_HOME"]) / f"worker-{backend}-{workers}.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen(
        worker_command(workers, None), cwd=ROOT, env=proc_env, stdout=log, stderr=log
    )
    try:
        with transaction() as conn:
            client = db.clients.get_client_by_name(conn, "bench") or db.clients.create_client(
                conn, "bench"
            )
            libs = db.libraries.library_ids(conn, ["default"])
        # warm-up: one job per process so model loading is not timed
        ids = []
        started = None
        for i in range(jobs + workers):
            if i == workers:
                _wait(ids)
                ids = []
                started = time.monotonic()
            job_id = uuid.uuid4()
            id_num = make_id_num("110105", __import__("datetime").date(1980, 1, 1), i)
            image = images[i % len(images)]
            with transaction() as conn:
                job, _ = db.jobs.create_job(
                    conn,
                    kind="register",
                    client_id=client["id"],
                    request_id=None,
                    request_hash=hashlib.sha256(job_id.bytes).digest(),
                    meta={"libraryIds": libs, "duplicatePolicy": "allow"},
                    callback_url=None,
                    origin="self",
                    image=image,
                    ref=None,
                    max_attempts=3,
                    job_id=job_id,
                    id_num_encrypted=crypto.encrypt(s.encryption_key, id_num, aad=job_id.bytes),
                    person={"name": "bench", "personType": "normal", "customerID": None},
                )
            send_job(str(job["id"]), "register")
            ids.append(str(job_id))
        _wait(ids)
        assert started is not None
        rate = jobs / (time.monotonic() - started)
        with transaction() as conn:
            stages = conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'total')::float8)"
                " AS total, percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'embed')::float8)"
                " AS embed, percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'detect')::float8)"
                " AS detect, percentile_cont(0.5) WITHIN GROUP (ORDER BY (timings->>'db')::float8)"
                " AS db FROM jobs WHERE id = ANY(%s::uuid[])",
                (ids,),
            ).fetchone()
        STAGES[(backend, workers)] = {k: 1000 * float(v) for k, v in stages.items()}
        return rate
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()


def _wait(ids: list[str], timeout: float = 600) -> None:
    from shared.db import transaction

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with transaction() as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status IN ('done', 'failed')) AS n,"
                " count(*) FILTER (WHERE status = 'failed') AS f FROM jobs WHERE id = ANY(%s::uuid[])",
                (ids,),
            ).fetchone()
        if row["n"] == len(ids):
            if row["f"]:
                raise RuntimeError(f"{row['f']} jobs failed")
            return
        time.sleep(0.05)
    raise TimeoutError("jobs did not finish")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--backends", default="dlib,onnx")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    from shared.cli.embedded import EmbeddedPostgres, EmbeddedRedis
    from shared.db.migrate import apply_migrations

    tmp = Path(tempfile.mkdtemp(prefix="facelib-bench-"))
    pg, rd = EmbeddedPostgres(tmp / "pg"), EmbeddedRedis(tmp / "redis")
    env = {
        **os.environ,
        "DATABASE_URL": pg.start(),
        "REDIS_URL": rd.start(),
        "FACELIB_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "FACELIB_HOME": str(tmp),
        "FACELIB_BACKEND_THREADS": "1",
    }
    os.environ.update(
        {k: v for k, v in env.items() if k.startswith(("FACELIB", "DATABASE", "REDIS"))}
    )
    try:
        apply_migrations(env["DATABASE_URL"])
        results = {}
        for workers in (int(w) for w in args.workers.split(",")):
            for backend in args.backends.split(","):
                results[(backend, workers)] = run(backend, workers, args.jobs, env)
                print(f"{backend} x{workers}: {results[(backend, workers)]:.2f} jobs/s", flush=True)
        print(
            f"\n{args.jobs} registration jobs (800-px photos) per run, this machine "
            f"({os.cpu_count()} cores):\n"
        )
        print(
            "| backend | worker processes | jobs/s | vs dlib, same workers "
            "| median ms in the task: total / detect / embed / db |"
        )
        print("|---|---|---|---|---|")
        for (backend, workers), rate in results.items():
            base = results.get(("dlib", workers))
            ratio = f"{rate / base:.2f}x" if base else "-"
            st = STAGES[(backend, workers)]
            print(
                f"| {backend} | {workers} | {rate:.2f} | {ratio} "
                f"| {st['total']:.0f} / {st['detect']:.0f} / {st['embed']:.0f} / {st['db']:.0f} |"
            )
    finally:
        from shared.db import close_pool

        close_pool()
        rd.stop()
        pg.stop()


if __name__ == "__main__":
    main()
