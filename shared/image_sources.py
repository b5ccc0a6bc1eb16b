"""Where a job's image bytes come from: `self` (base64 sent in the request, stored with the
job), `fds` (the file server) or `uri` (a URL fetched by the worker)."""

from __future__ import annotations

from shared.errors import E, FaceLibError


def load_image(origin: str, data: bytes | None, ref: str | None, *, client_id: int) -> bytes:
    if origin == "self":
        if data is None:
            raise FaceLibError(E.INTERNAL, detail="job has no image")
        return bytes(data)
    raise FaceLibError(E.IMAGE_ORIGIN_UNSUPPORTED, detail=f"origin {origin!r} is not supported yet")
