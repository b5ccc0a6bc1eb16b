"""The accept path against a bare Flask endpoint: same body, same gunicorn, one run (issue #16).

    uv run python scripts/bench_accept.py [--seconds 15] [--connections 8] [--rounds 1]

Starts, in one run:

- **bare**: a Flask app under gunicorn with the API's worker settings (`shared.cli.api_command`:
  gthread, 2 workers x 8 threads) whose one endpoint parses the JSON body, decodes the base64
  image and answers a 202 envelope: the framework's ceiling for this body;
- **service**: the service's API (`api:create_app()`, the same command `facelib up` runs) on the
  embedded PostgreSQL + Redis of `facelib up` and the tests (in a temporary directory), or on
  DATABASE_URL / REDIS_URL when set (a fresh database, dropped at the end). No worker runs:
  accepted jobs queue, and the queue and the jobs table are emptied before each measurement.

Both get the same seed-shaped body (an async recong with a face photo as base64: ~137 KB) from
the same load generator: `--connections` keep-alive connections (http.client, one thread each,
spread over `--procs` processes), each sending its next request as soon as the last is answered,
for `--seconds` after `--warmup` seconds. Prints one Markdown table (req/s, p50, p99, errors, CPU
per request of the server processes) and the ratio service/bare, with the command line, the
machine and what the load generator itself cost in CPU (it shares the cores with the servers).

`--profile cpu|wall` runs the service under cProfile (one profiler per request thread, per-thread
CPU time or wall time; gunicorn hooks in this script only, nothing in the service) and prints
where an accepted request spends its time; profiled throughput is not comparable, so the bare
endpoint is not measured then.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PATH = "/tech/ai/face/faceLib/person/recong"
PROFILE_ENV = "FACELIB_BENCH_PROFILE"  # read by the gunicorn hooks below, in the bench only


# --- the bare endpoint (imported by gunicorn: `bench_accept:bare_app()`) -----------------------


def bare_app() -> Any:
    """Flask's floor for this request: parse the JSON, decode the image, answer the envelope."""
    import binascii
    import uuid

    from flask import Flask, jsonify, request

    app = Flask("bare")

    @app.post(PATH)
    def recong() -> Any:
        body = request.get_json(force=True)
        try:
            raw = base64.b64decode(body["faceImage"]["data"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            return jsonify({"errcode": 2002, "errmsg": "bad image", "data": None}), 400
        data = {"taskId": str(uuid.uuid4()), "status": "queued", "bytes": len(raw)}
        return jsonify({"errcode": 0, "errmsg": "SUCCESS", "data": data}), 202

    return app


# --- profiling hooks (gunicorn config written by `--profile`) ----------------------------------

_profilers: list[Any] = []
_stages: dict[str, list[float]] = {}  # stage -> [calls, thread CPU s, wall s]
_profile_lock = threading.Lock()
_local = threading.local()  # .measuring: this thread's request falls in the measured window
_measured = [0]  # requests begun while the marker file existed


def _measuring() -> bool:
    """Whether the bench's marker file (present during the measured window) exists."""
    _, _, out = os.environ[PROFILE_ENV].partition(":")
    _local.measuring = (Path(out) / "measuring").exists()
    if _local.measuring:
        with _profile_lock:
            _measured[0] += 1
    return _local.measuring


# `--profile stages`: (module, attribute) wrapped with a timer; nested stages are included in
# their parents. Module globals are patched where the caller looks them up; names the code at
# hand lacks are skipped (the table then simply has no row for them).
STAGES = [
    ("api.auth", "authenticated_client"),
    ("shared.db.clients", "authenticate"),
    ("api.faces", "json_body"),
    ("api.faces", "load"),
    ("api.faces", "decode_self_image"),
    ("api.faces", "check_image_ref"),
    ("api.faces", "queue_depth"),
    ("api.faces", "request_hash"),
    ("api.faces", "submit_job"),
    ("shared.db.jobs", "create_job"),
    ("shared.db.audit", "write_row"),
    ("shared.jobs", "send_job"),
    ("api.faces", "respond"),
    ("shared.db.pool", "_connection"),
]


def _timed(name: str, fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            c, w = time.thread_time() - c0, time.perf_counter() - w0
            if getattr(_local, "measuring", False):
                with _profile_lock:
                    acc = _stages.setdefault(name, [0, 0.0, 0.0])
                    acc[0] += 1
                    acc[1] += c
                    acc[2] += w

    return wrapper


def _timed_cm(name: str, cm: Any) -> Any:
    """A context manager factory timed from enter to exit (shared.db._connection: the pool)."""
    import contextlib as cl

    @cl.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0, w0 = time.thread_time(), time.perf_counter()
        with cm(*args, **kwargs) as value:
            c, w = time.thread_time() - c0, time.perf_counter() - w0
            if getattr(_local, "measuring", False):
                with _profile_lock:
                    label = name + " (enter: pool getconn + check)"
                    acc = _stages.setdefault(label, [0, 0.0, 0.0])
                    acc[0] += 1
                    acc[1] += c
                    acc[2] += w
            yield value

    return wrapper


def _stage_hooks(worker: Any) -> None:
    import importlib

    app = worker.wsgi
    for module, attr in STAGES:
        try:  # a stage the code at hand does not have (renamed, moved) is left out
            mod = importlib.import_module(module)
            fn = getattr(mod, attr)
        except (ImportError, AttributeError):
            continue
        label = f"{module}.{attr}"
        setattr(mod, attr, _timed_cm(label, fn) if attr == "_connection" else _timed(label, fn))
    # the per-client rate limit checked by the route's decorator (flask-limiter looks the method
    # up on the instance at call time; its before_request hook holds the original, timed below)
    with contextlib.suppress(ImportError, AttributeError):
        from api.extensions import limiter

        limiter._check_request_limit = _timed(  # type: ignore[method-assign]
            "route rate limit (flask-limiter, in the view's decorator)",
            limiter._check_request_limit,
        )
    # every before/after-request hook of the app, by name, and the phases Flask runs them in
    for registry, kind in (
        (app.before_request_funcs, "before"),
        (app.after_request_funcs, "after"),
    ):
        for key, funcs in registry.items():
            for i, fn in enumerate(funcs):
                name = getattr(fn, "__qualname__", None) or getattr(fn.func, "__qualname__", "?")
                funcs[i] = _timed(f"{kind}_request {key or 'app'}: {name}", fn)
    for phase in ("preprocess_request", "dispatch_request", "process_response"):
        setattr(app, phase, _timed(f"flask {phase}", getattr(app, phase)))
    whole = _timed("WSGI call (the whole app)", app)

    def timed_app(environ: dict, start_response: Any) -> Any:
        _measuring()
        return list(whole(environ, start_response))

    worker.wsgi = timed_app


def post_worker_init(worker: Any) -> None:
    """`stages`: time the named stages (thread CPU and wall). `cpu`/`wall`: each request thread
    profiles its requests with its own cProfile.Profile; merged when the worker exits."""
    import cProfile

    mode, _, _ = os.environ[PROFILE_ENV].partition(":")
    if mode == "stages":
        _stage_hooks(worker)
        return
    timer = time.thread_time if mode == "cpu" else time.perf_counter
    local = threading.local()
    app = worker.wsgi

    def profiled(environ: dict, start_response: Any) -> Any:
        if not _measuring():
            return list(app(environ, start_response))
        prof = getattr(local, "prof", None)
        if prof is None:
            prof = local.prof = cProfile.Profile(timer)
            with _profile_lock:
                _profilers.append(prof)
        prof.enable()
        try:
            return list(app(environ, start_response))
        finally:
            prof.disable()

    worker.wsgi = profiled


def worker_exit(server: Any, worker: Any) -> None:
    import pstats

    mode, _, out = os.environ[PROFILE_ENV].partition(":")
    (Path(out) / f"requests-{os.getpid()}.txt").write_text(str(_measured[0]))
    if mode == "stages":
        with _profile_lock:
            data = dict(_stages)
        (Path(out) / f"stages-{os.getpid()}.json").write_text(json.dumps(data))
        return
    with _profile_lock:
        profs = list(_profilers)
    if not profs:
        return
    stats = pstats.Stats(profs[0])
    for prof in profs[1:]:
        stats.add(prof)
    stats.dump_stats(str(Path(out) / f"api-{os.getpid()}.prof"))


# --- load generator ----------------------------------------------------------------------------


def _connection_loop(
    port: int, body: bytes, headers: dict[str, str], start: float, end: float, out: list
) -> None:
    """One keep-alive connection: (finished_at, latency_s, errcode) per answer in [start, end)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while True:
        t0 = time.time()
        if t0 >= end:
            break
        try:
            conn.request("POST", PATH, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            t1 = time.time()
            try:
                errcode = int(json.loads(payload)["errcode"])
            except (ValueError, KeyError, TypeError):
                errcode = -resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            t1, errcode = time.time(), -1
        if t0 >= start:
            out.append((t1, t1 - t0, errcode))
    conn.close()


def _generator_process(args: tuple) -> dict[str, Any]:
    """Threads of one load-generator process; returns its samples and its own CPU time."""
    port, body, headers, start, end, threads = args
    cpu0 = time.process_time()
    outs: list[list] = [[] for _ in range(threads)]
    ts = [
        threading.Thread(target=_connection_loop, args=(port, body, headers, start, end, o))
        for o in outs
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"samples": [s for o in outs for s in o], "cpu": time.process_time() - cpu0}


def drive(
    port: int,
    body: bytes,
    token: str | None,
    seconds: float,
    warmup: float,
    conns: int,
    procs: int,
    watch: dict[str, int | None],
    marker: Path | None = None,
) -> dict[str, Any]:
    """`conns` connections over `procs` processes, measured for `seconds` after `warmup`; the
    CPU the `watch` process trees spend in the measured window comes back as "cpu"."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    if token:
        headers["Authorization"] = token
    procs = max(1, min(procs, conns))
    shares = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
        list(pool.map(abs, range(procs)))  # start the processes before the clock does
        start = time.time() + 0.5 + warmup
        end = start + seconds
        cpu = CpuWindow(watch, (start, end), marker)
        jobs = [(port, body, headers, start, end, n) for n in shares]
        results = list(pool.map(_generator_process, jobs))
    samples = [s for r in results for s in r["samples"] if s[0] < end]
    ok = sorted(lat for _, lat, code in samples if code == 0)
    errors: dict[int, int] = {}
    for _, _, code in samples:
        if code != 0:
            errors[code] = errors.get(code, 0) + 1
    return {
        "ok": len(ok),
        "rps": len(ok) / seconds,
        "p50": 1000 * statistics.median(ok) if ok else float("nan"),
        "p99": 1000 * _quantile(ok, 0.99) if ok else float("nan"),
        "errors": errors,
        "gen_cpu": sum(r["cpu"] for r in results),
        "cpu": cpu.result(),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=1000, method="inclusive")[int(q * 1000) - 1]


# --- processes and their CPU -------------------------------------------------------------------


def _proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root: int | None) -> float:
    """User + system CPU seconds of a process and its descendants (Linux /proc)."""
    if root is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _proc_tree(root):
        with contextlib.suppress(OSError):
            fields = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class CpuWindow:
    """CPU seconds a set of process trees spend while the load generator measures."""

    def __init__(
        self,
        roots: dict[str, int | None],
        window: tuple[float, float],
        marker: Path | None = None,
    ) -> None:
        """`marker`: a file present exactly during the window (the profiling hooks count only
        while it exists, so the warm-up's one-time costs stay out of the profile)."""
        self.roots, self.window, self.marker = roots, window, marker
        self.used: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start, end = self.window
        time.sleep(max(0.0, start - time.time()))
        if self.marker:
            self.marker.touch()
        before = {k: tree_cpu(v) for k, v in self.roots.items()}
        time.sleep(max(0.0, end - time.time()))
        self.used = {k: tree_cpu(v) - before[k] for k, v in self.roots.items()}
        if self.marker:
            self.marker.unlink(missing_ok=True)

    def result(self) -> dict[str, float]:
        self.thread.join()
        return self.used


def _wait_http(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/live")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn on {port} did not start; see {log}") from None
            time.sleep(0.2)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


# --- the run -----------------------------------------------------------------------------------


def seed_body(photo: Path) -> bytes:
    """The seed's recong shape, async, with the photo inline as base64."""
    image = base64.b64encode(photo.read_bytes()).decode()
    body = {"async": True, "faceImage": {"type": "image", "origin": "self", "data": image}}
    return json.dumps(body).encode()


def _postmaster_pid(database_url: str) -> int | None:
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        pid_file = Path(row[0]) / "postmaster.pid"
        if pid_file.exists():
            return int(pid_file.read_text().split()[0])
    return None


def _redis_pid(redis_url: str) -> int | None:
    import redis

    with contextlib.suppress(redis.RedisError):
        info = redis.Redis.from_url(redis_url).info("server")
        pid = int(info["process_id"])
        return pid if Path(f"/proc/{pid}").exists() else None
    return None


def purge(database_url: str, redis_url: str) -> None:
    """Empty the face queues and the jobs (and their inputs) between measurements."""
    import psycopg
    import redis

    from shared.queue import QUEUE_FACES, QUEUE_FACES_SYNC

    redis.Redis.from_url(redis_url).delete(QUEUE_FACES, QUEUE_FACES_SYNC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM jobs")
        conn.execute("VACUUM ANALYZE jobs")
        conn.execute("VACUUM ANALYZE job_inputs")


def print_profile(prof_dir: Path, requests_done: int, mode: str, top: int) -> None:
    import pstats

    if mode == "stages":
        merged: dict[str, list[float]] = {}
        for f in prof_dir.glob("stages-*.json"):
            for name, (n, cpu, wall) in json.loads(f.read_text()).items():
                acc = merged.setdefault(name, [0, 0.0, 0.0])
                acc[0] += n
                acc[1] += cpu
                acc[2] += wall
        if not merged:
            print("\n(no stage timings written: did the API workers exit cleanly?)")
            return
        per = 1000 / max(1, requests_done)
        window = f"{requests_done} requests in the measured window"
        print(f"\n### Where an accepted request's time goes ({window})\n")
        print("Stages timed in the API workers (nested stages are part of their parents):\n")
        print("| stage | calls/request | thread CPU ms/request | wall ms/request |")
        print("|---|---|---|---|")
        for name, (n, cpu, wall) in sorted(merged.items(), key=lambda kv: -kv[1][2]):
            print(
                f"| `{name}` | {n / max(1, requests_done):.2f} | {cpu * per:.2f} | {wall * per:.2f} |"
            )
        return
    files = sorted(prof_dir.glob("api-*.prof"))
    if not files:
        print("\n(no profile written: did the API workers exit cleanly?)")
        return
    stats = pstats.Stats(str(files[0]))
    for f in files[1:]:
        stats.add(str(f))
    per = 1000 / max(1, requests_done)
    kind = "CPU (thread_time)" if mode == "cpu" else "wall"
    window = f"cProfile, {requests_done} requests in the measured window"
    print(f"\n### Where an accepted request's {kind} goes ({window})\n")
    print(f"cumulative ms per request of each function, top {top} by cumulative time:\n")
    print("| ms/request | calls/request | function |")
    print("|---|---|---|")
    rows = []
    for (file, line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = file
        for marker in ("/site-packages/", str(ROOT) + "/", "/lib/python3"):
            if marker in short:
                short = short.split(marker, 1)[1]
        rows.append((ct, nc, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    for ct, nc, label in rows[:top]:
        print(f"| {ct * per:.2f} | {nc / max(1, requests_done):.1f} | `{label}` |")
    stats.dump_stats(str(prof_dir / "merged.prof"))
    print(f"\n(full profile: {prof_dir / 'merged.prof'}; open with python -m pstats)")


def main() -> None:  # noqa: C901, PLR0915 - one linear script
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15, help="measured seconds per target")
    ap.add_argument("--warmup", type=float, default=5, help="unmeasured seconds before each")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument("--rounds", type=int, default=1, help="bare/service pairs, alternating")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (as facelib up)")
    ap.add_argument("--threads", type=int, default=8, help="gunicorn threads (as facelib up)")
    ap.add_argument(
        "--photo",
        default=str(ROOT / "tests/fixtures/faces/obama_480p.jpg"),
        help="the face photo sent as base64 (default: 103 KB JPEG, a 137 KB body)",
    )
    ap.add_argument("--only", choices=["bare", "service"], help="measure one target only")
    ap.add_argument(
        "--profile",
        choices=["stages", "cpu", "wall"],
        help="time the service's stages, or cProfile its API (thread CPU or wall time)",
    )
    ap.add_argument("--top", type=int, default=45, help="profile rows to print")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    from shared.cli import api_command
    from shared.cli.embedded import free_port, scratch_servers
    from shared.cli.up import stop_group

    base = Path(tempfile.mkdtemp(prefix="bench-accept-"))
    logs = base / "logs"
    logs.mkdir()
    body = seed_body(Path(args.photo))
    cores = os.cpu_count()
    print(f"`{shlex.join([Path(sys.executable).name, *sys.argv])}`\n")
    print(
        f"machine: {platform.node()}, {cores} cores ({platform.processor() or platform.machine()}),"
        f" load average before the run {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f}"
        f" / {os.getloadavg()[2]:.2f}; Python {platform.python_version()}"
    )
    print(
        f"body: {len(body):,} bytes (async recong, {Path(args.photo).name} as base64);"
        f" gunicorn gthread {args.workers} workers x {args.threads} threads;"
        f" {args.connections} keep-alive connections from {args.procs} generator process(es);"
        f" {args.warmup:g} s warm-up + {args.seconds:g} s measured per target\n"
    )

    servers: Any = None
    procs: list[subprocess.Popen] = []
    try:
        import psycopg

        servers = scratch_servers(
            base, "facelib_bench", os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
        )
        database_url, redis_url = servers.database_url, servers.redis_url

        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "FACELIB_INDEX_KEY": base64.b64encode(os.urandom(32)).decode(),
            "FACELIB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            "FACELIB_HOME": str(base / "home"),
            "PROMETHEUS_MULTIPROC_DIR": str(base / "prometheus"),
        }
        (base / "prometheus").mkdir()
        os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL") if k in env})
        os.environ.update({k: v for k, v in env.items() if k.startswith("FACELIB_")})
        from shared.db.migrate import apply_migrations
        from shared.settings import get_settings

        get_settings.cache_clear()
        apply_migrations(database_url)
        from shared.db import clients as repo

        with psycopg.connect(database_url, autocommit=False) as conn:
            from psycopg.rows import dict_row

            conn.row_factory = dict_row  # type: ignore[assignment]
            # no rate limit worth the name: the bench measures the path, not the limiter's verdict
            client = repo.create_client(
                conn,
                f"bench-{secrets.token_hex(3)}",
                ["face:recognize"],
                rate_limit="1000000/second",
            )
            token = repo.issue_token(conn, client["id"], 24 * 3600)["token"]
            conn.commit()

        targets: list[tuple[str, list[str], dict[str, str], int]] = []
        if args.only != "service" and not args.profile:
            port = free_port()
            cmd = api_command(port, args.workers, args.threads)
            # the app named on the command line replaces the config's `wsgi_app`
            cmd += ["--pythonpath", str(SCRIPTS), "bench_accept:bare_app()"]
            targets.append(("bare Flask (parse JSON + b64decode)", cmd, env, port))
        if args.only != "bare":
            port = free_port()
            cmd = api_command(port, args.workers, args.threads)
            senv = {**env, "FACELIB_PORT": str(port)}
            if args.profile:
                prof_dir = base / "profile"
                prof_dir.mkdir()
                conf = base / "profile.conf.py"
                conf.write_text(  # the service's own configuration, plus the hooks
                    f"import sys\nsys.path.insert(0, {str(SCRIPTS)!r})\n"
                    "from shared.cli.gunicorn_conf import *  # noqa\n"
                    "from bench_accept import post_worker_init, worker_exit  # noqa\n"
                )
                cmd[cmd.index("--config") + 1] = str(conf)
                senv[PROFILE_ENV] = f"{args.profile}:{prof_dir}"
            targets.append(("service async recong", cmd, senv, port))

        results: dict[str, list[dict[str, Any]]] = {t[0]: [] for t in targets}
        running: dict[str, subprocess.Popen] = {}
        for label, cmd, tenv, port in targets:
            log = logs / f"{port}.log"
            proc = _spawn(cmd, tenv, log)
            procs.append(proc)
            running[label] = proc
            if label.startswith("bare"):
                # the bare app has no /health/live: any answer means it listens
                deadline = time.monotonic() + 60
                while True:
                    try:
                        import http.client

                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                        c.request("GET", "/")
                        c.getresponse().read()
                        break
                    except OSError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"bare gunicorn did not start; see {log}") from None
                        time.sleep(0.2)
            else:
                _wait_http(port, proc, log)

        pg_pid, redis_pid = _postmaster_pid(database_url), _redis_pid(redis_url)
        for _ in range(args.rounds):
            for label, _cmd, _env, port in targets:
                is_service = not label.startswith("bare")
                if is_service:
                    purge(database_url, redis_url)
                roots = {"gunicorn": running[label].pid}
                if is_service:
                    roots |= {"postgres": pg_pid, "redis": redis_pid}
                r = drive(
                    port,
                    body,
                    token if is_service else None,
                    args.seconds,
                    args.warmup,
                    args.connections,
                    args.procs,
                    roots,
                    base / "profile" / "measuring" if args.profile and is_service else None,
                )
                r["load"] = os.getloadavg()[0]
                if is_service:
                    import psycopg as _pg

                    with _pg.connect(database_url) as conn:
                        r["jobs"] = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
                        r["audit"] = conn.execute(
                            "SELECT count(*) FROM audit_log WHERE task_id IN (SELECT id FROM jobs)"
                        ).fetchone()[0]
                results[label].append(r)

        print(
            "| target | ok req/s | p50 ms | p99 ms | errors | server CPU ms/req |"
            " generator CPU s / measured s | load avg after |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, runs in results.items():
            for i, r in enumerate(runs):
                cpu = sum(v for v in r["cpu"].values() if v == v)
                parts = ", ".join(
                    f"{k} {1000 * v / max(1, r['ok']):.1f}" for k, v in r["cpu"].items()
                )
                name = label if len(runs) == 1 else f"{label} #{i + 1}"
                errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
                print(
                    f"| {name} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {errors} |"
                    f" {1000 * cpu / max(1, r['ok']):.1f} ({parts}) |"
                    f" {r['gen_cpu']:.1f} / {args.seconds:g} | {r['load']:.2f} |"
                )
        if len(results) == 2:
            (bare_label, bare), (svc_label, svc) = results.items()
            b = sum(r["rps"] for r in bare) / len(bare)
            s = sum(r["rps"] for r in svc) / len(svc)
            p99 = max(r["p99"] for r in svc)
            print(
                f"\n**service / bare throughput: {s / b:.2f}x** ({s:.1f} / {b:.1f} req/s);"
                f" service p99 {p99:.1f} ms at {args.connections} connections"
                f" (issue #16's bar: >= 0.4x, p99 <= 50 ms)"
            )
        for label, runs in results.items():
            if "jobs" in runs[-1]:
                print(
                    f"\n{label}: {runs[-1]['jobs']} jobs (and {runs[-1]['audit']} audit rows"
                    " naming them) after the last run, warm-up included; purged before each run"
                )
        if args.profile:
            for proc in procs:
                stop_group(proc, 40)
            procs.clear()
            # the profile covers the warm-up too: count the accepted jobs, warm-up included
            # requests the API workers began inside the measured window(s)
            counted = sum(int(f.read_text()) for f in (base / "profile").glob("requests-*.txt"))
            print_profile(base / "profile", counted, args.profile, args.top)
    finally:
        for proc in procs:
            stop_group(proc, 40)
        if servers is not None:
            servers.stop()
        if args.keep or args.profile:
            print(f"\n(kept {base})")
        else:
            import shutil

            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
