"""Sync latency behind an async backlog: a teller's call while a batch waits (issue #16 item 5).

Runs against a live service (e.g. `uv run facelib up`):

    uv run python scripts/bench_sync_priority.py --token flt_... [--backlog 2000] [-n 30]

Enrols one person, times `-n` sync recong calls on an idle queue, submits `--backlog` async
recong jobs, then times `-n` sync calls again while that backlog waits. Prints p50 / p99 of
both and their ratio, and how many async jobs still waited after the last sync call (if none
did, the second measurement did not happen behind a backlog: raise --backlog).
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
API = "/tech/ai/face/faceLib/person"


def jpeg_b64(path: Path, max_side: int = 800) -> str:
    img = Image.open(path).convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:7007")
    ap.add_argument("--token", required=True)
    ap.add_argument("--backlog", type=int, default=2000)
    ap.add_argument("-n", type=int, default=30, help="sync calls per measurement")
    args = ap.parse_args()
    faces = ROOT / "tests" / "fixtures" / "faces"
    enrolled = {"origin": "self", "data": jpeg_b64(faces / "obama_1.jpg")}
    probe = {"origin": "self", "data": jpeg_b64(faces / "obama_2.jpg")}
    batch = {"origin": "self", "data": jpeg_b64(faces / "biden_1.jpg")}
    session = requests.Session()
    session.headers["Authorization"] = args.token

    def post(path: str, body: dict) -> dict:
        r = session.post(f"{args.url}{API}/{path}", json=body, timeout=300)
        return r.json()

    reg = post(
        "reg",
        {"idNum": "11010519491231002X", "name": "bench", "personType": "normal",
         "faceImage": enrolled},
    )  # fmt: skip
    assert reg["errcode"] in (0, 5004), reg

    def sync_latencies() -> list[float]:
        out = []
        for _ in range(args.n):
            t = time.perf_counter()
            answer = post("recong", {"faceImage": probe, "async": False})
            out.append(1000 * (time.perf_counter() - t))
            assert answer["errcode"] == 0, answer
            time.sleep(0.2)
        return out

    idle = sync_latencies()
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        task_ids = list(
            pool.map(
                lambda _: post("recong", {"faceImage": batch, "async": True})["data"]["taskId"],
                range(args.backlog),
            )
        )
    submitted_s = time.perf_counter() - t
    busy = sync_latencies()
    waiting = sum(
        1
        for tid in task_ids[-200:]
        if session.get(f"{args.url}/tech/ai/face/faceLib/task/{tid}", timeout=30).json()["data"][
            "status"
        ]
        == "queued"
    )
    print(f"backlog: {args.backlog} async recong jobs submitted in {submitted_s:.1f} s")
    print()
    print("| sync recong | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| idle queue | {pct(idle, 50):.0f} | {pct(idle, 99):.0f} |")
    print(f"| behind the backlog | {pct(busy, 50):.0f} | {pct(busy, 99):.0f} |")
    print(f"| ratio | {pct(busy, 50) / pct(idle, 50):.2f} | {pct(busy, 99) / pct(idle, 99):.2f} |")
    print()
    print(f"after the last sync call, {waiting} of the last 200 async jobs were still queued")


if __name__ == "__main__":
    main()
