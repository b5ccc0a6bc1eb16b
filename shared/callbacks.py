"""Delivering async results to clients: Standard Webhooks signatures and one bounded POST.

Each delivery is POSTed with `webhook-id` (stable across retries, for de-duplication),
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>` made
with the client's secret (and, during a rotation, also the previous one, space-separated as the
spec allows). Only a 2xx counts; redirects are not followed. Retries are scheduled in Postgres
(`callback_deliveries.next_attempt_at`) by the worker, not here.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from standardwebhooks.webhooks import Webhook


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets if s)


def callback_url_problem(url: str, allow_private: bool) -> str | None:
    """Why a callback URL may not be used (None if fine): scheme, host, and where it resolves.

    Loopback, link-local, private and other non-global addresses are refused unless the
    operator allows them (FACELIB_CALLBACK_ALLOW_PRIVATE, for intranet receivers).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback URL must be http(s)://host/..."
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return "callback host does not resolve"
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if getattr(addr, "ipv4_mapped", None):
            addr = addr.ipv4_mapped
        if not addr.is_global:
            return "callback host resolves to a non-public address"
    return None


def post_callback(
    url: str,
    payload: dict[str, Any],
    *,
    webhook_id: str,
    secrets: list[str],
    timeout: float,
    allow_private: bool,
) -> tuple[int | None, str | None, int]:
    """POST once. Returns (http_status, error or None on 2xx, duration in ms)."""
    started = time.monotonic()
    problem = callback_url_problem(url, allow_private)
    if problem:
        return None, problem, 0
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json; charset=utf-8",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(secrets, webhook_id, now, body),
        "user-agent": "faceLib-callbacks/1",
    }
    try:
        resp = requests.post(
            url,
            data=body.encode("utf-8"),
            headers=headers,
            timeout=(min(5.0, timeout), timeout),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return None, f"{type(exc).__name__}", int((time.monotonic() - started) * 1000)
    duration = int((time.monotonic() - started) * 1000)
    if 200 <= resp.status_code < 300:
        return resp.status_code, None, duration
    return resp.status_code, f"HTTP {resp.status_code}", duration
