"""Delivering async results to clients: Standard Webhooks signatures and one bounded POST.

Each delivery is POSTed with `webhook-id` (stable across retries, for de-duplication),
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>` made
with the client's secret (and, during a rotation, also the previous one, space-separated as the
spec allows). Only a 2xx counts; redirects are not followed (a 3xx is a failed attempt).
Retries are scheduled in Postgres (`callback_deliveries.next_attempt_at`) by the worker, not here.

A callback URL is client input that makes the worker open a connection, so it goes through the
same address-pinned machinery as `uri` image fetches (shared/safe_fetch.py):

1. The URL must be http(s) with a host, no user:password, in the canonical forms safe_fetch
   accepts; the port must be the scheme's default (80, 443) unless allowlisted.
2. The host is resolved **once**; every address must be globally routable (the same rules as
   `uri`), unless the host or network is on FACELIB_CALLBACK_ALLOWLIST or
   FACELIB_CALLBACK_ALLOW_PRIVATE is on.
3. The connection goes to that checked address; TLS carries the name in SNI and the
   certificate is verified against it. No proxy, `.netrc` or other environment setting applies
   (a raw socket, not requests).
4. The whole attempt (resolution, connect, TLS, send, reply) ends by one deadline,
   FACELIB_CALLBACK_TIMEOUT_SECONDS: each socket operation waits at most the time left, and a
   watchdog shuts the socket down at the deadline whatever it is doing. Only the status line of
   the reply is read, at most MAX_REPLY_BYTES; the rest is never read.

FACELIB_CALLBACK_ALLOWLIST entries (comma-separated): `name`, `IP`, `CIDR` (IPv6 in brackets
when a port follows), each optionally `:port`. An entry exempts its host (or the addresses in
its network) from the public-address rule, on the scheme's default port only; `:port` allows
that port too. FACELIB_CALLBACK_ALLOW_PRIVATE (development, tests, all-intranet deployments)
allows loopback, private and CGNAT addresses on any port, but still never link-local (the cloud
metadata service), multicast, unspecified or reserved addresses.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from shared.errors import FaceLibError
from shared.safe_fetch import (
    DEFAULT_PORTS,
    FetchPolicy,
    IPAddress,
    IPNetwork,
    Resolver,
    Watchdog,
    connect_pinned,
    parse_url,
    resolve_host,
)

USER_AGENT = "faceLib-callbacks/1"
# We need the status line only; a receiver may send anything after it, none of it is read.
MAX_REPLY_BYTES = 4096
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_PUBLIC = FetchPolicy()  # the `uri` policy with nothing allowlisted: the public-address rule
_NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3", "::/128", "fe80::/10", "ff00::/8")
)


def _in_any(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """`addr` (or the IPv4 address an IPv4-mapped IPv6 one carries) is in one of `networks`."""
    forms = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        forms.append(addr.ipv4_mapped)
    return any(a.version == n.version and a in n for n in networks for a in forms)


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets if s)


class CallbackRefused(Exception):
    """The URL is refused by the callback policy; the message says why (no secrets in it)."""


@dataclass(frozen=True)
class AllowEntry:
    host: str | None = None  # a DNS name, lower case
    network: IPNetwork | None = None
    port: int | None = None  # None: the scheme's default port only


def parse_allowlist(entries: tuple[str, ...] | list[str]) -> tuple[AllowEntry, ...]:
    """FACELIB_CALLBACK_ALLOWLIST entries; ValueError naming a malformed one."""
    out = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        port: int | None = None
        target = entry
        if entry.startswith("["):
            inner, sep, rest = entry[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{raw.strip()!r}: malformed [IPv6] entry")
            target, port_text = inner, rest[1:]
        elif entry.count(":") == 1:
            target, port_text = entry.split(":")
        else:
            port_text = ""
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{raw.strip()!r}: port must be 1-65535")
            port = int(port_text)
        try:
            out.append(AllowEntry(network=ipaddress.ip_network(target, strict=False), port=port))
            continue
        except ValueError:
            pass
        if not _HOST_NAME.fullmatch(target):
            raise ValueError(f"{raw.strip()!r} is not a host name, IP or CIDR [:port]")
        out.append(AllowEntry(host=target, port=port))
    return tuple(out)


@dataclass(frozen=True)
class CallbackPolicy:
    allow_private: bool = False
    allowlist: tuple[AllowEntry, ...] = ()
    deadline: float = 10.0  # the whole attempt: DNS, connect, TLS, send, reply
    connect_timeout: float = 5.0
    max_reply_bytes: int = MAX_REPLY_BYTES
    ca_certs: str | None = None  # None: the system's trust store
    resolver: Resolver | None = field(default=None, compare=False)  # tests: fake DNS

    @classmethod
    def from_settings(cls, settings: object) -> CallbackPolicy:
        deadline = float(settings.callback_timeout_seconds)  # type: ignore[attr-defined]
        return cls(
            allow_private=bool(settings.callback_allow_private),  # type: ignore[attr-defined]
            allowlist=parse_allowlist(settings.callback_allowlist),  # type: ignore[attr-defined]
            deadline=deadline,
            connect_timeout=min(5.0, deadline),
        )

    def _entries_for(self, host: str, addr: IPAddress) -> list[AllowEntry]:
        return [
            e
            for e in self.allowlist
            if e.host == host or (e.network is not None and _in_any(addr, (e.network,)))
        ]

    def check(self, scheme: str, host: str, port: int, addrs: list[IPAddress]) -> None:
        """CallbackRefused unless every address, and the port, may be called."""
        default_port = port == DEFAULT_PORTS[scheme]
        for addr in addrs:
            if _in_any(addr, _NEVER):
                raise CallbackRefused(f"{host} is or resolves to a forbidden address")
            if self.allow_private:
                continue  # any port: test and intranet receivers listen where they like
            entries = self._entries_for(host, addr)
            if not entries and not _PUBLIC.address_allowed(addr):
                raise CallbackRefused(f"{host} is or resolves to a non-public address")
            if not default_port and not any(e.port == port for e in entries):
                raise CallbackRefused(f"port {port} is not allowed for {scheme} callbacks")


def _target(url: str, policy: CallbackPolicy, time_left: float) -> tuple[Any, ...]:
    """(scheme, host, port, path, host_header, addresses): parsed, resolved once, checked."""
    try:
        scheme, host, port, path, host_header = parse_url(url)
    except FaceLibError as err:
        raise CallbackRefused(err.detail or "malformed URL") from None
    addrs = resolve_host(host, port, time_left, policy.resolver)
    policy.check(scheme, host, port, addrs)
    return scheme, host, port, path, host_header, addrs


def callback_url_problem(
    url: str, allow_private: bool, allowlist: tuple[str, ...] | None = None
) -> str | None:
    """Why a callback URL may not be used (None if fine), judged as a delivery would judge it.

    The API's early answer to a client; the worker judges again, on the one DNS answer it then
    connects to, at every attempt. `allowlist` None: FACELIB_CALLBACK_ALLOWLIST.
    """
    if allowlist is None:
        from shared.settings import get_settings

        allowlist = get_settings().callback_allowlist
    policy = CallbackPolicy(allow_private=allow_private, allowlist=parse_allowlist(allowlist))
    try:
        _target(url, policy, 5.0)
    except CallbackRefused as exc:
        return str(exc)
    except FaceLibError as err:
        return f"callback host: {err.detail or err.errmsg}"
    return None


def _exchange(sock: socket.socket, request: bytes, policy: CallbackPolicy, deadline: float) -> int:
    """Send the request, read the status line (at most max_reply_bytes), return the status."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    sock.sendall(request)  # one timeout for the whole send (Python >= 3.5)
    reply = b""
    while len(reply) < policy.max_reply_bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline")
        sock.settimeout(left)
        chunk = sock.recv(min(1024, policy.max_reply_bytes - len(reply)))
        if not chunk:
            break
        reply += chunk
        if b"\n" in reply:
            break
    match = _STATUS_LINE.match(reply)
    if match is None:
        raise ValueError("no HTTP status line in the reply")
    return int(match.group(1))


def deliver(
    url: str, body: bytes, headers: dict[str, str], policy: CallbackPolicy
) -> tuple[int | None, str | None]:
    """One bounded POST to `url` under `policy`: (HTTP status or None, error or None on 2xx)."""
    deadline = time.monotonic() + policy.deadline
    try:
        scheme, host, port, path, host_header, addrs = _target(url, policy, policy.deadline)
    except CallbackRefused as exc:
        return None, f"refused: {exc}"
    except FaceLibError as err:  # resolution failed or timed out
        return None, f"DNS: {err.detail or err.errmsg}"
    head = [f"POST {path} HTTP/1.1", f"Host: {host_header}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    request = "\r\n".join(head).encode("latin-1") + body
    last_error = "no address to connect to"
    for addr in addrs:  # all checked; the first that connects is used
        left = deadline - time.monotonic()
        if left <= 0:
            break
        watchdog = Watchdog(left)
        made: list[socket.socket] = []

        def keep(sock: socket.socket, w: Watchdog = watchdog, made: list = made) -> None:
            made.append(sock)
            w.watch(sock)

        try:
            sock = connect_pinned(
                scheme,
                host,
                addr,
                port,
                timeout=min(policy.connect_timeout, left),
                ca_certs=policy.ca_certs,
                on_socket=keep,
            )
        except OSError as exc:  # ssl.SSLError included
            watchdog.stop()
            for s in made:
                s.close()
            if watchdog.fired:
                break
            if isinstance(exc, ssl.SSLError):
                return None, f"TLS: {exc.reason or type(exc).__name__}"
            last_error = f"connect failed ({_reason(exc)})"
            continue
        try:
            status = _exchange(sock, request, policy, deadline)
        except (OSError, ValueError) as exc:
            if watchdog.fired or isinstance(exc, TimeoutError):
                return None, f"timed out: no reply within {policy.deadline:g} s"
            if isinstance(exc, ValueError):
                return None, "malformed reply: no HTTP status line"
            return None, f"connection broken ({_reason(exc)})"
        finally:
            watchdog.stop()
            sock.close()
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"
    if time.monotonic() >= deadline:
        return None, f"timed out: not connected within {policy.deadline:g} s"
    return None, last_error


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return exc.strerror or type(exc).__name__


def post_callback(
    url: str,
    payload: dict[str, Any],
    *,
    webhook_id: str,
    secrets: list[str],
    policy: CallbackPolicy,
) -> tuple[int | None, str | None, int]:
    """POST once. Returns (http_status, error or None on 2xx, duration in ms)."""
    started = time.monotonic()
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    now = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(secrets, webhook_id, now, body),
        "User-Agent": USER_AGENT,
    }
    status, error = deliver(url, body.encode("utf-8"), headers, policy)
    return status, error, int((time.monotonic() - started) * 1000)
