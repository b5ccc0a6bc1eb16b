"""Fetching an image by URL (faceImage.origin = uri) without becoming an SSRF proxy.

Runs in the worker, never in the API request path. For the URL and for every redirect hop
(at most `max_redirects`):

1. The URL must be http or https, with a host and no user:password, on the scheme's default
   port. Host names must be DNS names or canonical IP literals (`0x7f000001`, `2130706433`,
   `127.1` and friends are refused, not guessed at).
2. The host is resolved once; **every** address must be globally routable: loopback,
   link-local (169.254.0.0/16, the cloud metadata service), private, CGNAT (100.64.0.0/10),
   multicast, reserved, unspecified, documentation and benchmark ranges, and IPv6 forms that
   embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, NAT64) are refused.
3. The connection goes to that validated address (urllib3 with the IP as the host; the name
   only in the Host header, TLS SNI and certificate check), so a second DNS answer can never
   be used: there is no DNS-rebinding window. No proxy settings from the environment apply.

Hosts and networks on the allowlist (FACELIB_FETCH_ALLOWLIST: names, IPs, CIDRs, for intranet
image servers) skip the address and port rules of steps 1-2; nothing is allowlisted by default.

The response is streamed with a byte cap, connect and read timeouts, and an overall deadline
(checked between reads, each read bounded by the time left). Outcomes are FaceLibErrors:
IMAGE_URL_REFUSED (3007) for the policy, IMAGE_FETCH_FAILED (3006) for the network and HTTP
errors (retried by the worker when transient), IMAGE_TOO_LARGE (3001) past the byte cap.

Why not requests-hardened: it has no host/CIDR allowlist (only "allow loopback"), no byte cap
and no overall deadline, and requests would read proxy settings from the environment.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError as Urllib3Error

from shared.errors import E, FaceLibError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "faceLib-fetch/1"
_CHUNK = 64 * 1024

# Refused even though Python's `is_global` may call them global (or did in older releases).
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # CGNAT
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and broadcast
        "::/96",  # IPv4-compatible IPv6 (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped (checked as IPv4 as well)
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "2002::/16",  # 6to4: embeds an IPv4 address
        "2001::/32",  # Teredo: embeds an IPv4 address
        "2001:20::/28",  # ORCHIDv2
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_DNS_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9-]{1,63}")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


def _refused(reason: str) -> FaceLibError:
    return FaceLibError(E.IMAGE_URL_REFUSED, detail=reason)


# The same errcode as IMAGE_FETCH_FAILED, not retried: the server answered, and a retry
# would get the same answer (404, 403...).
_FETCH_FAILED_FINAL = dataclasses.replace(E.IMAGE_FETCH_FAILED, retryable=False)


def _failed(reason: str, *, transient: bool = True) -> FaceLibError:
    return FaceLibError(E.IMAGE_FETCH_FAILED if transient else _FETCH_FAILED_FINAL, detail=reason)


_ALLOW_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def parse_allowlist(
    entries: tuple[str, ...] | list[str],
) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """FACELIB_FETCH_ALLOWLIST entries (host names, IP addresses, CIDRs; case and a trailing dot
    ignored) as (host names, networks); ValueError naming an entry that is none of them."""
    hosts: set[str] = set()
    nets: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            if not _ALLOW_HOST.fullmatch(entry):
                raise ValueError(f"{raw.strip()!r} is not a host name, IP or CIDR") from None
            hosts.add(entry)
    return frozenset(hosts), tuple(nets)


@dataclass(frozen=True)
class FetchPolicy:
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 10 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    deadline: float = 10.0
    max_redirects: int = 3
    ca_certs: str | None = None  # None: the system's trust store
    resolver: Resolver | None = field(default=None, compare=False)  # tests: fake DNS

    @classmethod
    def from_allowlist(cls, entries: tuple[str, ...] | list[str], **kw: object) -> FetchPolicy:
        hosts, nets = parse_allowlist(entries)
        return cls(allow_hosts=hosts, allow_networks=nets, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: object) -> FetchPolicy:
        deadline = float(settings.fetch_timeout_seconds)  # type: ignore[attr-defined]
        return cls.from_allowlist(
            settings.fetch_allowlist,  # type: ignore[attr-defined]
            max_bytes=int(settings.fetch_max_bytes),  # type: ignore[attr-defined]
            connect_timeout=min(3.0, deadline),
            read_timeout=min(5.0, deadline),
            deadline=deadline,
        )

    def address_allowed(self, addr: IPAddress) -> bool:
        if any(addr in net for net in self.allow_networks if net.version == addr.version):
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return self.address_allowed(addr.ipv4_mapped)
        if any(addr in net for net in _EXTRA_BLOCKED if net.version == addr.version):
            return False
        return addr.is_global and not addr.is_multicast and not addr.is_reserved


@dataclass(frozen=True)
class FetchResult:
    data: bytes
    content_type: str
    url: str  # the last hop's URL
    redirects: int


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # IDNA-encoded name, or the IP literal without brackets
    port: int
    target: str  # path and query
    host_header: str
    address: list[IPAddress]


def parse_url(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, target, host_header) of an http(s) URL, by the rules of step 1
    (except the port rule, which is each caller's); FaceLibError IMAGE_URL_REFUSED if malformed."""
    scheme, host, port, _, target, host_header = _parse(url)
    return scheme, host, port, target, host_header


def check_url_syntax(url: str) -> str | None:
    """Why `url` cannot be an image URL (None if its form is fine). No DNS, no I/O: the API's
    cheap check before it accepts a job."""
    try:
        _parse(url)
    except FaceLibError as err:
        return err.detail or err.errmsg
    return None


def _parse(url: str) -> tuple[str, str, int, bool, str, str]:
    """(scheme, host, port, port_given, target, host_header) or FaceLibError IMAGE_URL_REFUSED."""
    if not isinstance(url, str) or len(url) > 2048:
        raise _refused("URL missing or longer than 2048 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise _refused("URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _refused("malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _refused("only http and https URLs are fetched")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refused("URLs with user:password are not fetched")
    raw_host = parts.hostname
    if not raw_host:
        raise _refused("URL has no host")
    host = raw_host.rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        if "%" in host or ":" in host:
            raise _refused("malformed host")
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise _refused("host name is not valid IDNA") from None
        if not _DNS_NAME.fullmatch(host):
            raise _refused("host is not a valid DNS name")
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            # a numeric last label is no DNS name: an IPv4 address in a non-canonical form
            # (0x7f000001, 2130706433, 127.1, 0177.0.0.1) that resolvers interpret differently
            raise _refused("IP addresses must be written in canonical dotted form")
    elif isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise _refused("IPv6 zone ids are not fetched")
    effective = port or DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    bracketed = f"[{host}]" if ip is not None and ip.version == 6 else host
    host_header = bracketed if effective == DEFAULT_PORTS[scheme] else f"{bracketed}:{effective}"
    return scheme, host, effective, port is not None, target, host_header


_resolver_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="dns")


def _system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _resolve(host: str, port: int, policy: FetchPolicy, timeout: float) -> list[IPAddress]:
    return resolve_host(host, port, timeout, policy.resolver)


def resolve_host(
    host: str, port: int, timeout: float, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Every address `host` resolves to, resolved once, waiting at most `timeout` seconds.

    FaceLibError 3006 when it does not resolve in time, 3007 for an answer that is no address.
    Callers check the addresses and then connect only to them (`connect_pinned`).
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    resolver = resolver or _system_resolve
    # getaddrinfo has no timeout of its own: wait for it at most the time left
    future = _resolver_pool.submit(resolver, host, port)
    try:
        answers = future.result(timeout=max(0.01, timeout))
    except concurrent.futures.TimeoutError:
        raise _failed("host name resolution timed out") from None
    except (OSError, UnicodeError):
        raise _failed("host name does not resolve") from None
    addrs: list[IPAddress] = []
    for a in answers:
        try:
            addrs.append(ipaddress.ip_address(a.split("%", 1)[0]))
        except ValueError:
            raise _refused("host resolves to something that is not an IP address") from None
    if not addrs:
        raise _failed("host name does not resolve")
    return addrs


def _check(url: str, policy: FetchPolicy, time_left: float) -> _Target:
    scheme, host, port, _, target, host_header = _parse(url)
    host_allowed = host in policy.allow_hosts
    addrs = _resolve(host, port, policy, time_left)
    if not host_allowed:
        for addr in addrs:
            if not policy.address_allowed(addr):
                raise _refused(f"{host} is or resolves to a non-public address")
        exempt = all(
            any(a in n for n in policy.allow_networks if n.version == a.version) for a in addrs
        )
        if port != DEFAULT_PORTS[scheme] and not exempt:
            raise _refused(f"port {port} is not the default port of {scheme}")
    return _Target(scheme, host, port, target, host_header, addrs)


def connect_pinned(
    scheme: str,
    host: str,
    addr: IPAddress,
    port: int,
    *,
    timeout: float,
    ca_certs: str | None = None,
    on_socket: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """A TCP connection to the already-checked `addr` (never a fresh DNS answer), TLS-wrapped
    for https with SNI and certificate verification against the name `host`. No proxy.

    `on_socket` is told each socket as it is made (the raw one, then the TLS one) so that a
    caller's deadline watchdog can shut it down mid-handshake. OSError (ssl.SSLError included)
    on failure.
    """
    sock = socket.create_connection((str(addr), port), timeout=max(0.01, timeout))
    try:
        if on_socket is not None:
            on_socket(sock)
        if scheme != "https":
            return sock
        ctx = ssl.create_default_context(cafile=ca_certs)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        tls = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        if on_socket is not None:
            on_socket(tls)
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls


class Watchdog:
    """Shuts down every socket it watches once `seconds` have passed, whatever the socket is
    blocked in (connect, TLS handshake, a status line dripped a byte per read timeout): the
    one thing that makes a deadline overall. It keeps a duplicate of each socket's descriptor,
    so it still reaches a socket that TLS has wrapped since."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._fds: list[int] = []
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            fd = os.dup(sock.fileno())
            self._fds.append(fd)
            if self.fired:
                _shutdown_fd(fd)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for fd in self._fds:
                _shutdown_fd(fd)

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()


def _shutdown_fd(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.detach()  # the descriptor stays open until Watchdog.stop closes it


class _Watched:
    """A urllib3 connection whose socket a Watchdog shuts down at the overall deadline."""

    def __init__(self, *args: object, watchdog: Watchdog | None = None, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[call-arg]
        self._watchdog = watchdog

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        if self._watchdog is not None:
            self._watchdog.watch(sock)
        return sock


class _WatchedHTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _open(  # noqa: ANN202
    t: _Target, addr: IPAddress, policy: FetchPolicy, time_left: float, watchdog: Watchdog
):
    timeout = urllib3.Timeout(
        connect=max(0.01, min(policy.connect_timeout, time_left)),
        read=max(0.01, min(policy.read_timeout, time_left)),
    )
    common = {
        "port": t.port,
        "timeout": timeout,
        "retries": False,
        "maxsize": 1,
        "block": False,
        "watchdog": watchdog,  # passed on to each connection the pool makes
    }
    if t.scheme == "https":
        pool: urllib3.HTTPConnectionPool = _HTTPSPool(
            str(addr),
            cert_reqs="CERT_REQUIRED",
            ca_certs=policy.ca_certs,
            assert_hostname=t.host,
            server_hostname=t.host,
            **common,
        )
    else:
        pool = _HTTPPool(str(addr), **common)
    headers = {
        "Host": t.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "image/jpeg, image/png, image/webp, image/bmp, image/*;q=0.8",
        "Accept-Encoding": "identity",  # images are compressed already; no gzip bombs
    }
    resp = pool.urlopen(
        "GET",
        t.target,
        headers=headers,
        redirect=False,
        retries=False,
        preload_content=False,
        decode_content=False,
        assert_same_host=False,
    )
    return pool, resp


def _read_capped(resp, policy: FetchPolicy, deadline: float) -> bytes:  # noqa: ANN001
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise FaceLibError(
            E.IMAGE_TOO_LARGE,
            errmsg=f"image too large: the download is over {policy.max_bytes} bytes",
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _failed(f"download not finished within {policy.deadline:g} s")
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:  # each read waits at most the read timeout and the time left
            sock.settimeout(max(0.01, min(policy.read_timeout, left)))
        chunk = resp.read1(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > policy.max_bytes:
            raise FaceLibError(
                E.IMAGE_TOO_LARGE,
                errmsg=f"image too large: the download is over {policy.max_bytes} bytes",
            )
        chunks.append(chunk)


def fetch(url: str, policy: FetchPolicy) -> FetchResult:
    """GET `url` under `policy`; the body bytes, or a FaceLibError (3007, 3006 or 3001)."""
    deadline = time.monotonic() + policy.deadline
    watchdog = Watchdog(policy.deadline)
    try:
        return _fetch(url, policy, deadline, watchdog)
    finally:
        watchdog.stop()


def _fetch(url: str, policy: FetchPolicy, deadline: float, watchdog: Watchdog) -> FetchResult:
    current = url
    for hop in range(policy.max_redirects + 1):
        t = _check(current, policy, deadline - time.monotonic())
        resp = pool = None
        last_error: Exception | None = None
        try:
            for addr in t.address:  # all validated; the first that connects is used
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    pool, resp = _open(t, addr, policy, left, watchdog)
                    break
                except Urllib3Error as exc:
                    last_error = exc
            if resp is None:
                if last_error is not None and "timed out" in str(last_error).lower():
                    raise _failed("connection or response timed out")
                if time.monotonic() >= deadline:
                    raise _failed(f"not fetched within {policy.deadline:g} s")
                raise _failed(f"could not connect ({type(last_error).__name__})")
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                if not location:
                    raise _failed(f"HTTP {status} without Location", transient=False)
                if hop == policy.max_redirects:
                    raise _refused(f"more than {policy.max_redirects} redirects")
                current = urljoin(current, location)
                continue
            if status != 200:
                transient = status >= 500 or status in (408, 429)
                raise _failed(f"HTTP {status}", transient=transient)
            try:
                data = _read_capped(resp, policy, deadline)
            except (Urllib3Error, OSError) as exc:
                if time.monotonic() >= deadline or "timed out" in str(exc).lower():
                    raise _failed(f"download not finished within {policy.deadline:g} s") from None
                raise _failed(f"connection broken ({type(exc).__name__})") from None
            return FetchResult(
                data=data,
                content_type=resp.headers.get("Content-Type", ""),
                url=current,
                redirects=hop,
            )
        finally:
            if resp is not None:
                resp.close()
            if pool is not None:
                pool.close()
    raise AssertionError("unreachable")  # pragma: no cover
