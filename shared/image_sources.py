"""Where a job's image bytes come from: `self` (base64 sent in the request, stored with the
job), `fds` (the file server, shared/files/) or `uri` (a URL fetched by the worker under
the policy of shared/safe_fetch.py).

`check_image_ref` is the API's cheap check at submission (no I/O: the form of an fds path or of
a URL); `load_image` runs in the worker and does the real work (file lookup for this client,
the fetch), so a file deleted or purged after submission, or a host whose DNS changed, is
judged when the image is actually read.
"""

from __future__ import annotations

from shared.errors import E, FaceLibError

_FIELD = {"field": "faceImage.data"}


def check_image_ref(origin: str, data: str) -> None:
    """Refuse at submission what can never work: a malformed fds path (2002) or a URL whose
    form the fetch policy refuses (3007). No DNS, no database, no file access."""
    if origin == "fds":
        from shared.files.uploads import checked_path

        checked_path(data, "faceImage.data")
    elif origin == "uri":
        from shared.safe_fetch import check_url_syntax

        problem = check_url_syntax(data)
        if problem:
            raise FaceLibError(E.IMAGE_URL_REFUSED, detail=problem, data=dict(_FIELD))


def _check_image_header(data: bytes) -> None:
    """A fetched body must at least open as an image (the engine decodes it fully later)."""
    from shared.imaging import open_checked

    try:
        # the pixel cap is the engine's to apply when it decodes; here: is it an image at all
        open_checked(data, max_pixels=2**40, min_side=1).close()
    except FaceLibError as exc:
        if exc.err is E.IMAGE_UNDECODABLE:
            raise FaceLibError(
                E.IMAGE_UNDECODABLE, detail="the URL did not return a JPEG, PNG, BMP or WebP image"
            ) from exc
        raise


def load_image(origin: str, data: bytes | None, ref: str | None, *, client_id: int) -> bytes:
    if origin == "self":
        if data is None:
            raise FaceLibError(E.INTERNAL, detail="job has no image")
        return bytes(data)
    if origin == "fds":
        from shared.files.uploads import checked_path, read_file

        _, raw = read_file(client_id, checked_path(ref or "", "faceImage.data"))
        return raw
    if origin == "uri":
        from shared.safe_fetch import FetchPolicy, fetch
        from shared.settings import get_settings

        result = fetch(ref or "", FetchPolicy.from_settings(get_settings()))
        _check_image_header(result.data)
        return result.data
    raise FaceLibError(E.IMAGE_ORIGIN_UNSUPPORTED, detail=f"origin {origin!r} is not supported")
