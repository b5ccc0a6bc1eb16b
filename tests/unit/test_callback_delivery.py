"""Callback delivery (shared/callbacks.py) against real local HTTP(S) receivers.

Hostile receivers: a DNS name that rebinds to loopback, a redirect, a 300 MB reply, a reply
dripped a byte a second, a receiver that never answers or never speaks TLS. DNS is the only
test double (a patched `socket.getaddrinfo` or a resolver given to the policy); every server is
a real one on 127.0.0.1 and every delivery opens a real connection.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from shared.callbacks import (
    CallbackPolicy,
    callback_url_problem,
    deliver,
    parse_allowlist,
    post_callback,
)
from tests.helpers import LocalServer, QuietHandler, measure
from tests.unit.test_safe_fetch import _tls_files

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a test secret, base64 after the prefix
LOCAL = CallbackPolicy(allow_private=True, deadline=5.0)
# A global address (IANA's example.com); a rebinding test's pinned connection goes there and
# fails, which is the point: nothing of the test's listens there.
PUBLIC_ADDR = "93.184.215.14"


class Receiver(LocalServer):
    """A real HTTP receiver on 127.0.0.1 with one behaviour per path; `hits` counts requests
    and `sent` the reply bytes it managed to write."""

    class handler(QuietHandler):  # noqa: N801 - LocalServer's attribute
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.owner.hits.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self._route()

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self.owner.sent += len(data)

        def _route(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/ok":
                self.send_response(204)
                self.end_headers()
            elif path == "/redirect":
                self.send_response(307)
                self.send_header("Location", query)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/huge":  # a 300 MB reply
                size = 300 * 1024 * 1024
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * (1024 * 1024)
                for _ in range(300):
                    self._write(chunk)
            elif path == "/huge-line":  # 300 MB with no line break at all
                chunk = b"H" * (1024 * 1024)
                for _ in range(300):
                    self._write(chunk)
            elif path == "/drip":  # a byte every second, for a minute
                for byte in b"HTTP/1.1 200 OK, eventually, after a minute of dripping.....":
                    self._write(bytes([byte]))
                    time.sleep(1.0)
            elif path == "/hang":
                time.sleep(60)

    def __init__(self, tls: Any = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.hits: list[dict[str, Any]] = []
        self.sent = 0
        super().__init__(host, port, tls)


def resolve_as(monkeypatch: pytest.MonkeyPatch, name: str, *answers: str) -> list[str]:
    """`name` (and no other) resolves to answers[0] at the first lookup, answers[1] at the
    next and so on, the last one ever after; returns the list of its lookups, as they come."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def resolve(host: str, port: Any, *args: Any, **kw: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kw)
        lookups.append(host)
        addr = answers[min(len(lookups), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return lookups


@pytest.fixture()
def rx() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def post(url: str, policy: CallbackPolicy = LOCAL) -> tuple[int | None, str | None, int]:
    return post_callback(url, {"errcode": 0}, webhook_id="msg_1", secrets=[SECRET], policy=policy)


def test_delivery_is_signed_and_a_2xx_counts(rx: Receiver) -> None:
    status, error, duration_ms = post(f"{rx.base}/ok")
    assert (status, error) == (204, None) and duration_ms >= 0
    hit = rx.hits[0]
    assert Webhook(SECRET).verify(hit["body"], hit["headers"]) == {"errcode": 0}
    assert hit["headers"]["Host"] == f"127.0.0.1:{rx.port}"


# --- finding 2: DNS rebinding, redirects, proxies, ports ----------------------------------------


def test_a_rebinding_name_is_resolved_once_and_never_reaches_loopback(
    rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First answer public, every later one 127.0.0.1: the checked (public) address is the one
    connected to, so the loopback receiver sees nothing."""
    lookups = resolve_as(monkeypatch, "rebind.test", PUBLIC_ADDR, "127.0.0.1")
    # the public address may use the receiver's port (allowlisted), not its private neighbours
    policy = CallbackPolicy(
        allowlist=parse_allowlist([f"{PUBLIC_ADDR}/32:{rx.port}"]), deadline=3.0
    )
    status, error, _ = post(f"http://rebind.test:{rx.port}/ok", policy)
    assert status is None and error is not None
    assert rx.hits == []
    assert lookups == ["rebind.test"]  # one resolution per attempt, whatever happens after


def test_the_connection_goes_to_the_checked_answer_not_a_later_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with a receiver at the checked address: an intranet receiver on 127.0.0.2
    (allowlisted) and, on the same port of 127.0.0.1, the target a rebinding name points at
    next. The signed payload reaches the first, nothing reaches the second."""
    intranet = Receiver(host="127.0.0.2")
    target = Receiver(host="127.0.0.1", port=intranet.port)
    lookups = resolve_as(monkeypatch, "hooks.intranet", "127.0.0.2", "127.0.0.1")
    try:
        policy = CallbackPolicy(allowlist=parse_allowlist([f"127.0.0.2/32:{intranet.port}"]))
        assert post(f"http://hooks.intranet:{intranet.port}/ok", policy)[:2] == (204, None)
        assert len(intranet.hits) == 1 and target.hits == []
        assert Webhook(SECRET).verify(intranet.hits[0]["body"], intranet.hits[0]["headers"])
        assert lookups == ["hooks.intranet"]
    finally:
        intranet.close()
        target.close()


def test_a_name_that_answers_loopback_first_is_refused_before_connecting(
    rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve_as(monkeypatch, "rebind.test", "127.0.0.1")
    policy = CallbackPolicy(allowlist=parse_allowlist([f"{PUBLIC_ADDR}:{rx.port}"]))
    status, error, _ = post(f"http://rebind.test:{rx.port}/ok", policy)
    assert status is None and error is not None and error.startswith("refused:"), error
    assert rx.hits == []


def test_redirects_are_not_followed(rx: Receiver) -> None:
    other = Receiver()
    try:
        status, error, _ = post(f"{rx.base}/redirect?{other.base}/ok")
        assert (status, error) == (307, "HTTP 307")
        assert [h["path"] for h in rx.hits] == [f"/redirect?{other.base}/ok"]
        assert other.hits == []
    finally:
        other.close()


def test_proxy_settings_in_the_environment_are_ignored(
    rx: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Receiver()
    try:
        for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(var, proxy.base)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert post(f"{rx.base}/ok")[:2] == (204, None)
        assert len(rx.hits) == 1 and proxy.hits == []
    finally:
        proxy.close()


def test_address_and_port_policy() -> None:
    def problem(url: str, allowlist: tuple[str, ...] = (), private: bool = False) -> str | None:
        return callback_url_problem(url, private, allowlist)

    assert problem(f"https://{PUBLIC_ADDR}/hook") is None
    assert problem(f"http://{PUBLIC_ADDR}/hook") is None
    for url in (
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/hook",
        f"https://{PUBLIC_ADDR}:8443/hook",  # not the scheme's default port
        f"http://{PUBLIC_ADDR}:443/hook",
        f"http://{PUBLIC_ADDR}:99999/hook",  # no such port: a refusal, not an exception
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "http://0x7f000001/hook",
    ):
        assert problem(url), url
    # allowlist: a network or a name, on the default port unless the entry names one
    assert problem("https://10.1.2.3/hook", ("10.0.0.0/8",)) is None
    assert problem("https://10.1.2.3:8443/hook", ("10.0.0.0/8",))
    assert problem("https://10.1.2.3:8443/hook", ("10.0.0.0/8:8443",)) is None
    assert problem(f"https://{PUBLIC_ADDR}:8443/hook", (f"{PUBLIC_ADDR}:8443",)) is None
    assert problem("https://[fd00::5]:8443/hook", ("[fd00::/8]:8443",)) is None
    # private mode (tests, all-intranet): loopback on any port, never link-local or metadata
    assert problem("http://127.0.0.1:9/hook", private=True) is None
    assert problem("http://169.254.169.254/latest/meta-data/", private=True)
    assert problem("http://0.0.0.0:80/hook", private=True)
    assert problem("http://[fe80::1]/hook", private=True)


def test_allowlist_syntax() -> None:
    entries = parse_allowlist(["hooks.bank.internal:8443", "10.0.0.0/8", " [fd00::1]:444 "])
    assert [(e.host, e.network, e.port) for e in entries] == [
        ("hooks.bank.internal", None, 8443),
        (None, ipaddress.ip_network("10.0.0.0/8"), None),
        (None, ipaddress.ip_network("fd00::1/128"), 444),
    ]
    for bad in ("host:0", "host:70000", "host:x", "[fd00::1", "bad host", "a/b/c"):
        with pytest.raises(ValueError):
            parse_allowlist([bad])


def test_https_checks_the_name_on_the_pinned_address(tmp_path: Path) -> None:
    ca_file, ctx = _tls_files(tmp_path, "hooks.intranet")
    rx = Receiver(tls=ctx)
    try:

        def dns(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        policy = CallbackPolicy(allow_private=True, ca_certs=str(ca_file), resolver=dns)
        assert post(f"https://hooks.intranet:{rx.port}/ok", policy)[:2] == (204, None)
        assert rx.hits[0]["headers"]["Host"] == f"hooks.intranet:{rx.port}"
        status, error, _ = post(f"https://other.intranet:{rx.port}/ok", policy)
        assert status is None and error is not None and error.startswith("TLS:"), error
        assert len(rx.hits) == 1
    finally:
        rx.close()


# --- finding 3: bounded reply, one overall deadline ---------------------------------------------


def test_a_reply_dripped_byte_by_byte_ends_at_the_deadline(rx: Receiver) -> None:
    policy = CallbackPolicy(allow_private=True, deadline=2.0)
    started = time.monotonic()
    status, error, _ = post(f"{rx.base}/drip", policy)
    elapsed = time.monotonic() - started
    assert status is None and error is not None and error.startswith("timed out"), error
    assert elapsed < 30  # generous: the receiver would drip for a minute
    assert rx.sent < 30


def test_a_silent_receiver_ends_at_the_deadline(rx: Receiver) -> None:
    status, error, _ = post(f"{rx.base}/hang", CallbackPolicy(allow_private=True, deadline=1.5))
    assert status is None and error is not None and error.startswith("timed out"), error


def test_a_tls_handshake_that_never_comes_ends_at_the_deadline() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        port = listener.getsockname()[1]
        started = time.monotonic()
        policy = CallbackPolicy(allow_private=True, deadline=2.0)
        status, error, _ = post(f"https://127.0.0.1:{port}/hook", policy)
        assert status is None and error is not None and error.startswith("timed out"), error
        assert time.monotonic() - started < 30
    finally:
        for s in accepted:
            s.close()
        listener.close()


def test_a_reply_without_a_status_line_is_read_only_to_the_cap(rx: Receiver) -> None:
    status, error = deliver(f"{rx.base}/huge-line", b"{}", {}, LOCAL)
    assert (status, error) == (None, "malformed reply: no HTTP status line")
    assert rx.sent < 300 * 1024 * 1024


_MEASURE = """
import json, sys
from shared.callbacks import CallbackPolicy, post_callback
policy = CallbackPolicy(allow_private=True, deadline=30.0)
post_callback(sys.argv[1] + "/ok", {}, webhook_id="warm-up", secrets=[], policy=policy)
before = peak_kib()
status, error, _ = post_callback(sys.argv[1] + sys.argv[2], {"errcode": 0}, webhook_id="m",
                                 secrets=[], policy=policy)
print(json.dumps({"status": status, "error": error, "grew_kib": peak_kib() - before}))
"""


@pytest.mark.parametrize("path", ["/huge", "/huge-line"])
def test_a_300_mb_reply_costs_the_delivering_process_almost_nothing(
    rx: Receiver, path: str
) -> None:
    """Measured in a fresh process: its peak RSS may not grow by 10 MB while it delivers."""
    result = measure(_MEASURE, rx.base, path, timeout=120)
    print(f"{path}: peak RSS grew {result['grew_kib']} KiB")
    assert result["grew_kib"] <= 10 * 1024, result
    assert result["status" if path == "/huge" else "error"] == (
        200 if path == "/huge" else "malformed reply: no HTTP status line"
    )
    assert rx.sent < 300 * 1024 * 1024  # the receiver could not push it all: we hung up
