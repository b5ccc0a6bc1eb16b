"""Secrets and personal data: token generation and hashing, the idNum blind index and cipher.

- Tokens: `flt_` + 32 random bytes (base62) + a 6-character CRC32 checksum, so a leaked token is
  recognisable and a typo is refused without a database hit. Only SHA-256(token) is stored.
- idNum: looked up through a blind index HMAC-SHA256(index key, idNum) and kept encrypted with
  AES-256-GCM (key id stored beside it for rotation). Names stay in clear: DBAs search them and
  they are shown in the recognition response (see docs/data-protection in README).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
import zlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TOKEN_PREFIX = "flt_"  # noqa: S105 - a public prefix, not a secret
_ALPHABET = string.digits + string.ascii_letters


def _base62(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out)) or "0"


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()).to_bytes(4, "big")).rjust(6, "0")


def new_token() -> str:
    body = _base62(secrets.token_bytes(32))
    return f"{TOKEN_PREFIX}{body}{_checksum(body)}"


def token_well_formed(token: str) -> bool:
    if not token.startswith(TOKEN_PREFIX) or len(token) < len(TOKEN_PREFIX) + 20:
        return False
    body, check = token[len(TOKEN_PREFIX) : -6], token[-6:]
    return hmac.compare_digest(_checksum(body), check)


def sha256(data: str | bytes) -> bytes:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).digest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def new_webhook_secret() -> str:
    import base64

    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def blind_index(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode(), hashlib.sha256).digest()


def encrypt(key: bytes, plaintext: str, aad: bytes = b"") -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), aad)


def decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> str:
    return AESGCM(key).decrypt(blob[:12], blob[12:], aad).decode()


def encrypt_bytes(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM, as `encrypt`, for bytes (enrolment photos): nonce + ciphertext + tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_bytes(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    return AESGCM(key).decrypt(blob[:12], blob[12:], aad)


def mask_id_num(id_num: str) -> str:
    return id_num[:3] + "*" * max(len(id_num) - 6, 0) + id_num[-3:]
