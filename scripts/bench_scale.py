"""Scale benchmark: a synthetic library of N faces, searched through the repository.

    uv run python scripts/bench_scale.py [--faces 1000000] [--probes 1000]
        [--cache var/lfw-embeddings.npz] [--lfw ../shared/faces/lfw] [--sweep 100,200,400,800]

The gallery is drawn from a Gaussian fitted to the engine's own LFW embeddings (mean and full
covariance of one unit embedding per LFW person, `scripts/calibrate_score.py`'s cache, made on
first use), each draw renormalised to unit length. Genuine probes are stored faces moved by a
cosine distance drawn from LFW's same-person pair distances, in a direction drawn from LFW's
within-person variation; strangers are fresh draws, never enrolled. Ground truth is brute force
(numpy, in chunks): recall@1 is whether the repository's nearest face is the true nearest one
(for genuine probes, in practice the face the probe was made from).

The faces go in through the repository's bulk path (`db.faces.add_faces_bulk`, binary COPY)
with the search index dropped, then the index is built once (`db.search.build_search_index`,
as `facelib reindex --offline`). Searches run through `db.search.nearest_faces` with the service's
settings (ef_search growing with the library), and recognition through
`recognition.recognition_result` (counts, search, score and the gallery-mode decision).
A filtered search (a library holding 10% of the persons, beyond FACELIB_EXACT_SEARCH_MAX, so
through the iterative index scan) is measured against brute force within that library.

It uses its own embedded PostgreSQL in a temporary directory (sized by shared/cli/embedded.py as
`facelib up` does), or DATABASE_URL when set (a new database is created there and dropped).
Prints one Markdown table; with --sweep, one line per ef_search as well.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

BATCH = 20_000  # faces per bulk transaction
BRANCH_EVERY = 10  # every 10th batch also goes into the "branch" library (10% of persons)


# --- the synthetic library ----------------------------------------------------------------------


def fit(cache: Path, lfw: Path) -> dict[str, np.ndarray]:
    """Gaussian of the LFW identities, within-person variation and same-person distances."""
    from calibrate_score import load_embeddings

    data = load_embeddings(lfw, cache, "onnx", min(2, os.cpu_count() or 1))
    emb = data["embeddings"].astype(np.float64)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(data["names"].tolist()):
        by_person[name].append(i)
    firsts = np.array([idx[0] for idx in by_person.values()])
    identities = emb[firsts]
    genuine, residuals = [], []
    for idx in by_person.values():
        if len(idx) > 1:
            e = emb[idx]
            sims = e @ e.T
            genuine.extend((1.0 - sims[np.triu_indices(len(idx), 1)]).tolist())
            residuals.append(e - e.mean(0))
    within = np.cov(np.concatenate(residuals), rowvar=False)
    return {
        "mean": identities.mean(0),
        "chol": np.linalg.cholesky(np.cov(identities, rowvar=False) + 1e-9 * np.eye(128)),
        "within_chol": np.linalg.cholesky(within + 1e-9 * np.eye(128)),
        "genuine": np.array(genuine),
        "identities": np.array(len(identities)),
    }


def draw(model: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    x = model["mean"] + rng.standard_normal((n, 128)) @ model["chol"].T
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def move(model: dict, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row moved by a same-person distance, within-person direction, unit length kept."""
    d = rng.choice(model["genuine"], len(x))
    u = rng.standard_normal(x.shape) @ model["within_chol"].T
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    theta = np.arccos(np.clip(1.0 - d, -1.0, 1.0))[:, None]
    return (np.cos(theta) * x + np.sin(theta) * u).astype(np.float32)


def brute_nearest(gallery: np.ndarray, probes: np.ndarray, rows: np.ndarray | None = None):
    """Index (into `gallery`, or into `rows` of it) of each probe's nearest face."""
    best = np.full(len(probes), -2.0, dtype=np.float32)
    arg = np.zeros(len(probes), dtype=np.int64)
    idx = np.arange(len(gallery)) if rows is None else rows
    for s in range(0, len(idx), 50_000):
        part = idx[s : s + 50_000]
        sims = probes @ gallery[part].T
        a = sims.argmax(1)
        v = sims[np.arange(len(probes)), a]
        better = v > best
        best[better], arg[better] = v[better], part[a[better]]
    return arg


def id_num(i: int) -> str:
    from shared.idnum import make_id_num

    regions = ("110101", "310101", "440301", "610102", "510104", "330106", "420102", "320102")
    born = date(1940, 1, 1) + timedelta(days=(i // 1000) // len(regions))
    return make_id_num(regions[(i // 1000) % len(regions)], born, i % 1000)


# --- the database -------------------------------------------------------------------------------


def database(tmp: Path) -> tuple[str, object]:
    """(database URL, cleanup) for the benchmark's own database."""
    import psycopg

    external = os.environ.get("DATABASE_URL")
    if external:
        name = f"facelib_scale_{secrets.token_hex(4)}"
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(external, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return psycopg.conninfo.make_conninfo(external, dbname=name), drop
    from shared.cli.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp / "pg")
    return pg.start(), pg.stop


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000.0, q))


def backend_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a PostgreSQL backend on this machine; None when remote."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, items) -> tuple[list, list[float]]:
    out, lat = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(fn(item))
        lat.append(time.perf_counter() - t0)
    return out, lat


def real_faces() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, enrolled embedding, probe embedding) of the fixture people the issue names."""
    fixtures = REPO / "tests" / "fixtures" / "faces"
    pairs = [("obama", "obama_1.jpg", "obama_2.jpg"), ("rose_leslie", "rose_leslie_1.jpg",
             "rose_leslie_2.jpg")]  # fmt: skip
    if not all((fixtures / f).exists() for _, a, b in pairs for f in (a, b)):
        return []
    from worker.engine import EngineConfig, get_engine

    engine = get_engine(EngineConfig(backend="onnx", backend_threads=1))

    def embed(name: str) -> np.ndarray:
        analysis = engine.analyze((fixtures / name).read_bytes(), "recognize")
        return analysis.faces[0].embedding.astype(np.float32)

    return [(who, embed(a), embed(b)) for who, a, b in pairs]


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "lfw-embeddings.npz")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sweep", default="", help="comma-separated ef_search values to compare")
    ap.add_argument("--keep", action="store_true", help="keep the temporary database directory")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    model = fit(args.cache, args.lfw)
    gallery = np.concatenate(
        [draw(model, min(100_000, args.faces - s), rng) for s in range(0, args.faces, 100_000)]
    )
    n = len(gallery)
    targets = rng.choice(n, args.probes, replace=False)
    genuine = move(model, gallery[targets], rng)
    strangers = draw(model, args.probes, rng)
    branch_rows = np.concatenate(
        [np.arange(s, min(s + BATCH, n)) for s in range(0, n, BATCH * BRANCH_EVERY)]
    )
    branch_targets = rng.choice(branch_rows, min(args.probes, len(branch_rows)), replace=False)
    branch_probes = move(model, gallery[branch_targets], rng)
    t0 = time.perf_counter()
    truth_g = brute_nearest(gallery, genuine)
    truth_s = brute_nearest(gallery, strangers)
    truth_b = brute_nearest(gallery, branch_probes, branch_rows)
    truth_seconds = time.perf_counter() - t0
    real = real_faces()

    tmp = Path(tempfile.mkdtemp(prefix="facelib-scale-"))
    url, cleanup = database(tmp)
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0"),  # not used
            "FACELIB_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
            "FACELIB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        }
    )
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg.rows import dict_row

    from shared import db, recognition
    from shared.db.migrate import apply_migrations
    from shared.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    try:
        apply_migrations(url)
        conn = psycopg.connect(url, row_factory=dict_row, autocommit=True)
        register_vector(conn)
        memory = {
            k: conn.execute(f"SHOW {k}").fetchone()[k]
            for k in ("shared_buffers", "effective_cache_size", "maintenance_work_mem")
        }
        client = db.clients.create_client(conn, "bench-scale", scopes=["admin"])
        default = db.libraries.library_ids(conn, ["default"])
        branch = [db.libraries.create_library(conn, "bench-branch", "10%", client["id"])["id"]]

        # load: index dropped, faces by the bulk path in transactions of BATCH, index built once
        db.search.drop_search_index(conn)
        face_ids = np.zeros(n, dtype=np.int64)
        t0 = time.perf_counter()
        for b, s in enumerate(range(0, n, BATCH)):
            items = [
                {
                    "id_num": id_num(i),
                    "name": f"synthetic {i}",
                    "person_type": "normal",
                    "customer_id": None,
                    "embedding": gallery[i],
                    "box": [0, 0, 150, 150],
                    "quality": {"synthetic": 1.0},
                }
                for i in range(s, min(s + BATCH, n))
            ]
            libs = default + (branch if b % BRANCH_EVERY == 0 else [])
            with conn.transaction():
                ids = db.faces.add_faces_bulk(
                    conn,
                    settings,
                    items,
                    library_ids=libs,
                    client_id=client["id"],
                    model="synthetic",
                    backend="synthetic",
                )
            face_ids[s : s + len(ids)] = ids
            if b % 10 == 0:
                rate = (s + len(ids)) / (time.perf_counter() - t0)
                print(f"  loaded {s + len(ids)}/{n} ({rate:.0f} faces/s)", file=sys.stderr)
        real_ids = []
        if real:
            with conn.transaction():
                real_ids = db.faces.add_faces_bulk(
                    conn,
                    settings,
                    [
                        {
                            "id_num": id_num(n + k),
                            "name": who,
                            "person_type": "normal",
                            "customer_id": None,
                            "embedding": enrolled,
                        }
                        for k, (who, enrolled, _) in enumerate(real)
                    ],  # fmt: skip
                    library_ids=default,
                    client_id=client["id"],
                    model="onnx",
                    backend="onnx",
                )
        load_seconds = time.perf_counter() - t0
        conn.execute("VACUUM ANALYZE faces")
        t0 = time.perf_counter()
        partitions = db.search.partitions_for(n, settings.search_partition_faces)
        index_bytes = db.search.build_search_index(
            conn,
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            partitions=partitions,
        )
        build_seconds = time.perf_counter() - t0
        table_bytes = conn.execute("SELECT pg_table_size('faces') AS n").fetchone()["n"]
        print(
            f"  loaded in {load_seconds:.0f} s, index built in {build_seconds:.0f} s",
            file=sys.stderr,
        )

        def search(probe, **kw):
            with conn.transaction():
                rows = db.search.nearest_faces(
                    conn, probe, limit=recognition.CANDIDATES, ef_search=settings.hnsw_ef_search,
                    **kw,
                )  # fmt: skip
            return rows[0]["face_id"] if rows else None

        def recall(found, truth) -> float:
            return float(np.mean(np.array(found) == face_ids[truth]))

        timed(search, genuine[:100])  # warm the cache: the figures are for a running service
        cpu0 = backend_cpu_seconds(conn.info.backend_pid)
        g_found, g_lat = timed(search, genuine)
        cpu1 = backend_cpu_seconds(conn.info.backend_pid)
        # the server's CPU per search: what the latency would be on an otherwise idle core
        cpu_ms = "n/a (remote server)"
        if cpu0 is not None and cpu1 is not None:
            cpu_ms = f"{(cpu1 - cpu0) * 1000 / len(genuine):.1f}"
        s_found, s_lat = timed(search, strangers)
        # as recognition chooses: exact within a library of at most FACELIB_EXACT_SEARCH_MAX
        exact_b = len(branch_rows) <= settings.exact_search_max
        b_found, b_lat = timed(
            lambda p: search(p, library_ids=branch, exact=exact_b), branch_probes
        )
        b_how = "exact scan" if exact_b else "iterative index scan"
        real_found = [search(probe) for _, _, probe in real]

        def count(filters):
            with conn.transaction():
                return db.search.count_gallery(conn, **filters)

        counted, c_lat = timed(count, [{}] * 500 + [{"library_ids": branch}] * 500)

        def recognise(probe):
            with conn.transaction():
                return recognition.recognition_result(conn, settings, probe, {"request_meta": {}})

        r_out, r_lat = timed(recognise, genuine)
        match_rate = float(np.mean([r["isMatch"] == "true" for r in r_out]))
        ef_used = db.search.search_ef(
            settings.hnsw_ef_search,
            -(-n // partitions),
            settings.hnsw_ef_per_million,
            settings.hnsw_ef_max,
        )

        rows = [
            ("faces in the library", f"{n:,} (+{len(real_ids)} real)"),
            ("search settings", f"HNSW halfvec, {partitions} partition(s), m={settings.hnsw_m}, "
             f"ef_construction={settings.hnsw_ef_construction}, ef_search={ef_used}, "
             f"re-rank {max(recognition.CANDIDATES, db.search.RERANK_MIN)} exact"),
            ("recall@1, genuine probes", f"{recall(g_found, truth_g):.3f} ({len(genuine)})"),
            ("recall@1, strangers (nearest = brute-force nearest)",
             f"{recall(s_found, truth_s):.3f} ({len(strangers)})"),
            (f"recall@1, genuine, filtered to a 10% library ({b_how})",
             f"{recall(b_found, truth_b):.3f} ({len(branch_probes)})"),
            ("search p50 / p99 ms, genuine", f"{pct(g_lat, 50):.1f} / {pct(g_lat, 99):.1f}"),
            ("search server CPU ms per query (mean), genuine", cpu_ms),
            ("search p50 / p99 ms, strangers", f"{pct(s_lat, 50):.1f} / {pct(s_lat, 99):.1f}"),
            ("search p50 / p99 ms, filtered 10%", f"{pct(b_lat, 50):.1f} / {pct(b_lat, 99):.1f}"),
            ("gallery count (counter rows) p50 / p99 ms",
             f"{pct(c_lat, 50):.2f} / {pct(c_lat, 99):.2f} (= {counted[0]:,} / {counted[-1]:,})"),
            ("recognition (count + search + decision) p50 / p99 ms, genuine",
             f"{pct(r_lat, 50):.1f} / {pct(r_lat, 99):.1f}, isMatch true {match_rate:.3f}"),
            ("real photos matched (obama_2, rose_leslie_2 -> their _1)",
             ", ".join(f"{who}: {'yes' if f == i else 'NO'}"
                       for (who, _, _), f, i in zip(real, real_found, real_ids, strict=True))
             or "fixtures absent"),
            ("load through db.faces.add_faces_bulk", f"{load_seconds:.0f} s ({n / load_seconds:,.0f} faces/s)"),
            ("index build", f"{build_seconds:.0f} s"),
            ("load + index build", f"{(load_seconds + build_seconds) / 60:.1f} min"),
            ("index size / table size", f"{index_bytes / 2**20:.0f} MB / {table_bytes / 2**20:.0f} MB"),
            ("PostgreSQL memory", ", ".join(f"{k} {v}" for k, v in memory.items())),
        ]  # fmt: skip
        print(f"\n## bench_scale --faces {n} (probes {args.probes}, seed {args.seed};"
              f" brute-force truth {truth_seconds:.0f} s)\n")  # fmt: skip
        print("| measure | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        if args.sweep:
            print(
                "\n| ef_search per partition | recall@1 genuine | p50 / p99 ms | server CPU ms/query"
                " | recall@1 strangers | p50 / p99 ms |"
            )
            print("|---|---|---|---|---|---|")
            for ef in [int(x) for x in args.sweep.split(",") if x]:

                def fixed(p, ef=ef):
                    with conn.transaction():
                        r = db.search.nearest_faces(
                            conn,
                            p,
                            limit=recognition.CANDIDATES,
                            ef_search=ef,
                            ef_per_million=0,
                            ef_max=ef,
                        )
                    return r[0]["face_id"] if r else None

                c0 = backend_cpu_seconds(conn.info.backend_pid)
                gf, gl = timed(fixed, genuine)
                c1 = backend_cpu_seconds(conn.info.backend_pid)
                cpu = (
                    f"{(c1 - c0) * 1000 / len(genuine):.1f}"
                    if c0 is not None and c1 is not None
                    else "n/a"
                )
                sf, sl = timed(fixed, strangers)
                print(f"| {ef} | {recall(gf, truth_g):.3f} | {pct(gl, 50):.1f} / {pct(gl, 99):.1f}"
                      f" | {cpu} | {recall(sf, truth_s):.3f} | {pct(sl, 50):.1f} / {pct(sl, 99):.1f} |")  # fmt: skip
        conn.close()
    finally:
        cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
