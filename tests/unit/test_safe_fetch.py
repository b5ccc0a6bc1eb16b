"""The URL fetch policy (shared/safe_fetch.py) against local HTTP(S) servers that count hits.

Every server listens on 127.0.0.x; names other than `localhost` resolve through a fake resolver
given to the policy, so no test touches the network or real DNS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import FaceLibError
from shared.safe_fetch import FetchPolicy, check_url_syntax, fetch
from tests.helpers import ImageServer, face_bytes

PHOTO = face_bytes("obama_small.jpg")  # what ImageServer serves at /photo.jpg


@pytest.fixture
def srv() -> Iterator[ImageServer]:
    s = ImageServer()
    yield s
    s.close()


def fake_dns(table: dict[str, list[str]]):  # noqa: ANN201
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("NXDOMAIN")
        return table[host]

    return resolve


def errcode(url: str, policy: FetchPolicy) -> int:
    with pytest.raises(FaceLibError) as info:
        fetch(url, policy)
    return info.value.errcode


DEFAULT = FetchPolicy()
LOCAL = FetchPolicy.from_allowlist(["127.0.0.1"])


# --- the default policy: nothing local is ever contacted --------------------------------------


def test_default_policy_refuses_a_loopback_server_directly_and_by_name(srv: ImageServer) -> None:
    assert errcode(f"{srv.base}/photo.jpg", DEFAULT) == 3007
    assert errcode(f"http://localhost:{srv.port}/photo.jpg", DEFAULT) == 3007
    policy = FetchPolicy(resolver=fake_dns({"images.example.com": ["127.0.0.1"]}))
    assert errcode(f"http://images.example.com:{srv.port}/photo.jpg", policy) == 3007
    assert srv.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped 169.254.169.254
        "http://[::7f00:1]/",  # IPv4-compatible
        "http://[64:ff9b::7f00:1]/",  # NAT64
        "http://[2002:7f00:1::]/",  # 6to4
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[ff02::1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # CGNAT
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://198.18.0.1/",
        "http://192.0.2.1/",  # documentation
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_hello",
        "ftp://example.com/a.jpg",
        "dict://127.0.0.1:11211/stat",
        "http://user:pass@93.184.216.34/a.jpg",
        "http://93.184.216.34:8080/a.jpg",  # a public address, but not the default port
        "https://93.184.216.34:80/a.jpg",
        "http:///a.jpg",
        "http://exa mple.com/a.jpg",
        "http://[::1%25lo]/",
        "//93.184.216.34/a.jpg",
    ],
)
def test_refused_urls(url: str) -> None:
    started = time.monotonic()
    assert errcode(url, DEFAULT) == 3007
    assert time.monotonic() - started < 1


def test_every_resolved_address_must_be_public() -> None:
    """A name with one public and one private answer is refused (no lucky pick)."""
    policy = FetchPolicy(resolver=fake_dns({"mixed.example.com": ["93.184.216.34", "10.0.0.1"]}))
    assert errcode("http://mixed.example.com/a.jpg", policy) == 3007
    policy = FetchPolicy(resolver=fake_dns({"m6.example.com": ["::ffff:127.0.0.1"]}))
    assert errcode("http://m6.example.com/a.jpg", policy) == 3007


def test_unresolvable_host_is_a_fetch_failure() -> None:
    policy = FetchPolicy(resolver=fake_dns({}))
    assert errcode("http://nowhere.example.com/a.jpg", policy) == 3006


def test_resolution_is_bounded_by_the_deadline() -> None:
    def slow_dns(host: str, port: int) -> list[str]:
        time.sleep(3)
        return ["93.184.216.34"]

    started = time.monotonic()
    assert errcode("http://slow.example.com/a.jpg", FetchPolicy(resolver=slow_dns, deadline=0.5))
    assert time.monotonic() - started < 1.5


# --- allowlisted ----------------------------------------------------------------------------------


def test_allowlisted_address_is_fetched_on_any_port(srv: ImageServer) -> None:
    result = fetch(f"{srv.base}/photo.jpg", LOCAL)
    assert result.data == PHOTO and result.content_type == "image/jpeg"
    assert srv.hits == ["/photo.jpg"]
    result = fetch(
        f"http://localhost:{srv.port}/photo.jpg", FetchPolicy.from_allowlist(["127.0.0.0/8", "::1"])
    )
    assert result.data == PHOTO


def test_allowlisted_host_name(srv: ImageServer) -> None:
    policy = FetchPolicy.from_allowlist(
        ["images.intranet"], resolver=fake_dns({"images.intranet": ["127.0.0.1"]})
    )
    assert fetch(f"http://images.intranet:{srv.port}/photo.jpg", policy).data == PHOTO
    # the name is allowlisted, not its address
    assert errcode(f"http://127.0.0.1:{srv.port}/photo.jpg", policy) == 3007
    assert len(srv.hits) == 1


def test_redirect_from_allowlisted_server_to_a_refused_one_is_not_followed() -> None:
    intranet = ImageServer("127.0.0.1")
    other = ImageServer("127.0.0.2")
    try:
        policy = FetchPolicy.from_allowlist(["127.0.0.1/32"])
        target = f"{other.base}/photo.jpg"
        assert errcode(f"{intranet.base}/redirect?{target}", policy) == 3007
        for url in (
            "http://169.254.169.254/",
            "file:///etc/passwd",
            "http://[::1]/",
        ):
            assert errcode(f"{intranet.base}/redirect?{url}", policy) == 3007
        assert other.hits == []
        assert len(intranet.hits) == 4
        both = FetchPolicy.from_allowlist(["127.0.0.1", "127.0.0.2"])
        assert fetch(f"{intranet.base}/redirect?{target}", both).data == PHOTO
        assert other.hits == ["/photo.jpg"]
    finally:
        intranet.close()
        other.close()


def test_at_most_three_redirects(srv: ImageServer) -> None:
    result = fetch(f"{srv.base}/chain/2", LOCAL)  # 3 redirects: chain/2 -> 1 -> 0 -> photo
    assert result.data == PHOTO and result.redirects == 3
    srv.hits.clear()
    assert errcode(f"{srv.base}/chain/3", LOCAL) == 3007
    assert len(srv.hits) == 4  # the fifth URL is never requested


def test_http_errors_are_fetch_failures_and_4xx_are_not_retried(srv: ImageServer) -> None:
    with pytest.raises(FaceLibError) as info:
        fetch(f"{srv.base}/missing", LOCAL)
    assert info.value.errcode == 3006 and not info.value.err.retryable


def test_non_image_content_is_returned_for_the_image_check(srv: ImageServer) -> None:
    from shared.image_sources import _check_image_header

    result = fetch(f"{srv.base}/text", LOCAL)
    with pytest.raises(FaceLibError) as info:
        _check_image_header(result.data)
    assert info.value.errcode == 3003
    _check_image_header(PHOTO)


# --- bounded: bytes and time -------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/big-declared", "/big-chunked"])
def test_oversized_download_stops_at_the_cap(srv: ImageServer, route: str) -> None:
    policy = FetchPolicy.from_allowlist(["127.0.0.1"], max_bytes=1024 * 1024)
    started = time.monotonic()
    assert errcode(f"{srv.base}{route}", policy) == 3001
    assert time.monotonic() - started < 3


def test_slow_server_hits_the_overall_deadline(srv: ImageServer) -> None:
    policy = FetchPolicy.from_allowlist(["127.0.0.1"], deadline=1.5, read_timeout=1.0)
    started = time.monotonic()
    assert errcode(f"{srv.base}/slow", policy) == 3006
    assert time.monotonic() - started < 2.5


def test_silent_server_hits_the_read_timeout(srv: ImageServer) -> None:
    policy = FetchPolicy.from_allowlist(["127.0.0.1"], deadline=5, read_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(FaceLibError) as info:
        fetch(f"{srv.base}/hang", policy)
    assert info.value.errcode == 3006 and info.value.err.retryable
    assert time.monotonic() - started < 1.5


# --- TLS: connect to the validated IP, verify the certificate against the name ------------------


def _tls_files(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("test CA", ca_key, "test CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(name, key, "test CA", ca_key, False)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "leaf.pem")
    return ca_file, ctx


def test_https_pins_the_address_and_checks_the_name(tmp_path: Path) -> None:
    ca_file, ctx = _tls_files(tmp_path, "images.intranet")
    tls = ImageServer(tls=ctx)
    try:
        dns = fake_dns({"images.intranet": ["127.0.0.1"], "other.intranet": ["127.0.0.1"]})
        policy = FetchPolicy.from_allowlist(["127.0.0.1"], resolver=dns, ca_certs=str(ca_file))
        url = f"https://images.intranet:{tls.port}/photo.jpg"
        assert fetch(url, policy).data == PHOTO
        # same address, a name the certificate does not carry: refused by TLS verification
        assert errcode(f"https://other.intranet:{tls.port}/photo.jpg", policy) == 3006
        # the system trust store does not know the test CA
        system = FetchPolicy.from_allowlist(["127.0.0.1"], resolver=dns)
        assert errcode(url, system) == 3006
    finally:
        tls.close()


# --- the API's cheap check -----------------------------------------------------------------------


def test_url_syntax_check_needs_no_network() -> None:
    assert check_url_syntax("https://images.example.com/a/b.jpg?x=1") is None
    assert check_url_syntax("http://10.0.0.1/a.jpg") is None  # addresses are judged by the worker
    for bad in ("file:///etc/passwd", "gopher://x/", "http://0x7f000001/", "http://u@h/", "x"):
        assert check_url_syntax(bad), bad


def test_policy_from_settings_allows_nothing_by_default() -> None:
    from shared.settings import Settings

    s = Settings(database_url="x", redis_url="x", index_key=b"k", encryption_key=b"k")
    policy = FetchPolicy.from_settings(s)
    assert policy.allow_hosts == frozenset() and policy.allow_networks == ()
    assert policy.max_bytes == 10 * 1024 * 1024 and policy.deadline == 10
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("93.184.216.34"))


def test_api_side_check_of_image_refs() -> None:
    from shared.image_sources import check_image_ref

    check_image_ref("fds", "a" * 64 + ".jpg")
    check_image_ref("uri", "https://images.example.com/a.jpg")
    check_image_ref("self", "anything")
    for bad in ("../etc/passwd", "/etc/passwd", "A" * 64 + ".jpg", "%2e%2e%2f", "a" * 64):
        with pytest.raises(FaceLibError) as info:
            check_image_ref("fds", bad)
        assert info.value.errcode == 2002 and info.value.data == {"field": "faceImage.data"}
    with pytest.raises(FaceLibError) as info:
        check_image_ref("uri", "file:///etc/passwd")
    assert info.value.errcode == 3007


def test_a_status_line_dripped_byte_by_byte_ends_at_the_deadline() -> None:
    """Each byte arrives within the read timeout, so only the overall deadline can end it."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 60:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.5)

    threading.Thread(target=drip, daemon=True).start()
    try:
        policy = FetchPolicy.from_allowlist(["127.0.0.1"], deadline=2.0, read_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(FaceLibError) as info:
            fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/photo.jpg", policy)
        assert info.value.errcode == 3006 and "within" in info.value.errmsg, info.value.errmsg
        assert time.monotonic() - started < 20  # generous: the server would drip for 40 s
    finally:
        stop.set()
        listener.close()
