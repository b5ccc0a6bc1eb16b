"""API latency: how long async submissions take to be answered, next to sync calls.

Runs against a live service (e.g. `uv run facelib up`):

    uv run python scripts/bench_api.py --url http://127.0.0.1:7007 --token flt_... -n 100

Prints median / p95 / max latency of `async=true` recong submissions (answered after the job
row is committed and the task sent) and of `async=false` calls (which wait for the worker), with
their ratio, as a Markdown table.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def timed(session: requests.Session, url: str, token: str, body: dict) -> tuple[float, dict]:
    t = time.perf_counter()
    r = session.post(url, json=body, headers={"Authorization": token}, timeout=60)
    return time.perf_counter() - t, r.json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:7007")
    ap.add_argument("--token", required=True)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--photo", default=str(ROOT / "tests/fixtures/faces/obama_2.jpg"))
    args = ap.parse_args()
    image = base64.b64encode(Path(args.photo).read_bytes()).decode()
    endpoint = f"{args.url}/tech/ai/face/faceLib/person/recong"
    session = requests.Session()
    rows = {}
    for mode in (True, False):
        times = []
        for _ in range(args.n):
            dt, env = timed(
                session, endpoint, args.token, {"async": mode, "faceImage": {"data": image}}
            )
            assert env["errcode"] in (0, 5002), env
            times.append(dt * 1000)
        times.sort()
        rows["async=true" if mode else "async=false"] = (
            statistics.median(times),
            times[int(0.95 * (len(times) - 1))],
            times[-1],
        )
    print(
        f"\n{args.n} recong requests each ({Path(args.photo).name}, {len(image)} base64 bytes):\n"
    )
    print("| request | median ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for name, (med, p95, mx) in rows.items():
        print(f"| {name} | {med:.1f} | {p95:.1f} | {mx:.1f} |")
    a, s = rows["async=true"][0], rows["async=false"][0]
    print(f"\nasync answers in {a / s:.2f}x the time of a sync call (median).")


if __name__ == "__main__":
    main()
