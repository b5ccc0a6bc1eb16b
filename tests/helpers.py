"""Plain helpers shared by the unit and integration tests (no fixtures: those are in conftest).

- the test photos and where the repository is;
- `eventually`: the one "until it holds, or fail after a timeout" loop of the test suite;
- the API's paths and the seed-shaped request bodies;
- `LocalServer` / `QuietHandler`: real HTTP(S) servers on a loopback address, in a thread,
  and `ImageServer`, one that serves the test photos and hostile replies;
- `run_python` / `run_facelib` / `measure`: a fresh Python process (the CLI as an operator runs
  it, or a measurement that prints one JSON line).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "fixtures" / "faces"
LFW = Path(os.environ.get("FACELIB_LFW", ROOT.parent / "shared" / "faces" / "lfw"))

BASE = "/tech/ai/face/faceLib"
REG = f"{BASE}/person/reg"
RECONG = f"{BASE}/person/recong"
VERIFY = f"{BASE}/person/verify"
TASK = f"{BASE}/task/"
TOKEN = "/tech/ai/core/token"

T = TypeVar("T")


def face_bytes(name: str) -> bytes:
    return (FACES / name).read_bytes()


def face_b64(name: str) -> str:
    return base64.b64encode(face_bytes(name)).decode()


def small_jpeg_b64(name: str, max_side: int = 800) -> str:
    """A photo re-encoded to fit the 400 KB base64 limit (as a client would send it)."""
    import io

    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(FACES / name)).convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def reg_body(id_num: str, image_b64: str, **extra: Any) -> dict[str, Any]:
    """A registration as the seed sends it (sync, a vip, no customerID)."""
    return {
        "personType": "vip",
        "idNum": id_num,
        "name": "张三",
        "customerID": "",
        "faceImage": {"type": "image", "origin": "self", "data": image_b64},
        "async": False,
        **extra,
    }


def recong_body(image_b64: str, **extra: Any) -> dict[str, Any]:
    """A recognition as the seed sends it (sync)."""
    return {
        "async": False,
        "faceImage": {"type": "image", "origin": "self", "data": image_b64},
        **extra,
    }


def eventually(
    probe: Callable[[], T | None], timeout: float = 120, interval: float = 0.3, what: str = ""
) -> T:
    """Call `probe` until it returns a true value (not None, False, 0 or empty), and return it.

    Past `timeout` seconds: AssertionError naming `what` and the last value seen. An exception
    from `probe` ends the wait at once (e.g. "the process died")."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what or probe!r} (last: {value!r})")
        time.sleep(interval)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler for the test servers: HTTP/1.1, no access log, `send` for a whole
    reply, and a client that hangs up mid-reply is no error. The server's owner (a
    `LocalServer`) is `self.owner`."""

    protocol_version = "HTTP/1.1"

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send(
        self, status: int, body: bytes = b"", ctype: str = "text/plain", **headers: str
    ) -> None:
        """A complete reply; header names are keyword arguments with `_` for `-`."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class LocalServer:
    """A real HTTP(S) server on a loopback address (port 0: any free one), serving `handler` in
    a daemon thread until `close()`; `base` is its URL."""

    handler: type[QuietHandler] = QuietHandler

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.server = ThreadingHTTPServer((host, port), self.handler)
        self.server.daemon_threads = True
        self.server.owner = self  # type: ignore[attr-defined]
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.base = f"{'https' if tls else 'http'}://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ImageServer(LocalServer):
    """An image server on a loopback address that counts every request (`hits`): the test
    photos, redirects, junk, oversized, slow and silent replies.

    /faces/<name>: a photo of tests/fixtures/faces; /photo.jpg: obama_small.jpg;
    /redirect?<url>: 302 to <url>; /chain/<n>: n redirects, then the photo; /text: HTML;
    /missing: 404; /big-declared: Content-Length 50 MB, 1 KB sent; /big-chunked: 12.5 MB
    chunked; /endless: 64 MB chunked, unless the client hangs up; /slow: a byte every 0.3 s
    (never idle long enough for a read timeout); /hang: nothing for 10 s."""

    class handler(QuietHandler):  # noqa: N801 - LocalServer's attribute
        def do_GET(self) -> None:  # noqa: N802 - http.server's API
            self.owner.hits.append(self.path)
            path, _, query = self.path.partition("?")
            if path.startswith("/faces/"):
                self.send(200, face_bytes(path.rsplit("/", 1)[1]), "image/jpeg")
            elif path == "/photo.jpg":
                self.send(200, face_bytes("obama_small.jpg"), "image/jpeg")
            elif path == "/redirect":
                self.send(302, b"", Location=query)
            elif path.startswith("/chain/"):
                n = int(path.rsplit("/", 1)[1])
                self.send(302, b"", Location=f"/chain/{n - 1}" if n else "/photo.jpg")
            elif path == "/text":
                self.send(200, b"<html>this is not a photo</html>", "text/html")
            elif path == "/big-declared":
                self.send_response(200)
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b"\xff" * 1024)
            elif path in ("/big-chunked", "/endless"):  # no Content-Length: a running count
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"\xff" * 65536
                for _ in range(200 if path == "/big-chunked" else 1000):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if path == "/big-chunked":
                    self.wfile.write(b"0\r\n\r\n")
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            elif path == "/hang":
                time.sleep(10)
            else:
                self.send(404, b"nope")

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[str] = []
        super().__init__(host, tls=tls)


def run_python(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python ARGS` in its own process from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_facelib(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """The `facelib` CLI as an operator runs it: its own process, output captured."""
    return run_python(["-m", "shared.cli", *args], env, timeout)


# The peak resident set of this process image (VmHWM): for `measure` scripts, whose fresh
# process starts from nothing (ru_maxrss would start at the parent's, pytest's)
PEAK_RSS = """
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""


def measure(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run `script` (with `peak_kib()` defined) in a fresh process; the JSON it prints last."""
    out = run_python(["-c", PEAK_RSS + script, *args], timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
