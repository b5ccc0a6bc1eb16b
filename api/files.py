"""The file server (faceImage.origin = fds): upload, download and delete images.

`POST /tech/file/upload` takes `multipart/form-data` (field `file`) or JSON `{"data": base64}`,
checks the image, turns it upright, downscales it to FACELIB_UPLOAD_MAX_SIDE and re-encodes it
as JPEG (shared/files/uploads.py) and answers its `path` (`<sha256>.jpg`), the value clients send as
faceImage.data with origin fds. Download and delete answer only the client that uploaded the
file; a path of any other form (../, /etc/passwd, encoded variants) is refused with 2002 before
anything is looked up, and an unknown one gets 3008. All three need the `file:write` scope.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, request
from werkzeug.routing import PathConverter

from api.auth import require_scope
from api.envelope import respond
from api.schemas import (
    FileDeleteData,
    UploadData,
    UploadRequest,
    base64_text,
    decode_base64,
    documented,
    json_body,
)
from shared.errors import E, FaceLibError
from shared.files.stores import CONTENT_TYPE
from shared.files.uploads import checked_path, delete_file, read_file, store_upload
from shared.settings import get_settings

bp = Blueprint("files", __name__, url_prefix="/tech/file")


class StoredFileConverter(PathConverter):
    """A stored file's path: anything (checked_path answers 2002 for what is not one) except
    `upload`, so GET /tech/file/upload is the upload route's 405, as the document says."""

    regex = r"(?!upload$)[^/].*?"


def init_app(app: Flask) -> None:
    """Before the blueprint is registered: its routes use the converter."""
    app.url_map.converters["stored_file"] = StoredFileConverter


def _too_large(limit: int) -> FaceLibError:
    return FaceLibError(
        E.IMAGE_TOO_LARGE, errmsg=f"image too large: an upload must be at most {limit} bytes"
    )


def _uploaded_bytes(limit: int) -> bytes:
    if request.mimetype == "multipart/form-data":
        f = request.files.get("file")
        if f is None:
            raise FaceLibError(E.PARAM_MISSING, detail="file", data={"field": "file"})
        raw = f.stream.read(limit + 1)
        if len(raw) > limit:
            raise _too_large(limit)
        return raw
    body = json_body()
    if not isinstance(body, dict):
        raise FaceLibError(
            E.BODY_NOT_JSON,
            errmsg="send multipart/form-data with a `file` field, or a JSON object with `data`",
        )
    data = body.get("data")
    if not isinstance(data, str) or not data:
        raise FaceLibError(E.PARAM_MISSING, detail="data", data={"field": "data"})
    text = base64_text(data)
    if len(text) > (limit + 2) // 3 * 4:
        raise _too_large(limit)
    return decode_base64(text, "data")


@bp.post("/upload")
@require_scope("file:write")
@documented(body=UploadRequest, data=UploadData)
def upload_file() -> Response:
    """Store an image on the file server; answer the path to send as faceImage.data (fds)."""
    s = get_settings()
    # The app-wide body cap (FACELIB_MAX_REQUEST_BYTES) fits JSON calls; an upload may be a
    # full-size photo, in base64 at that: allow its own cap plus the encoding's overhead.
    request.max_content_length = s.upload_max_bytes * 4 // 3 + 64 * 1024
    row, created = store_upload(g.client["id"], _uploaded_bytes(s.upload_max_bytes))
    data = {
        "path": row["path"],
        "sha256": bytes(row["sha256"]).hex(),
        "size": row["size_bytes"],
        "originalSize": row["original_size_bytes"],
        "width": row["width"],
        "height": row["height"],
        "contentType": row["content_type"],
        "created": "true" if created else "false",
    }
    return respond(data, status=201 if created else 200)


@bp.get("/<stored_file:path>", merge_slashes=False)
@require_scope("file:write")
@documented(produces="image/jpeg")
def download_file(path: str) -> Response:
    """The stored JPEG of one of this client's files."""
    row, raw = read_file(g.client["id"], checked_path(path), touch=False)
    resp = Response(raw, mimetype=CONTENT_TYPE)
    resp.headers["ETag"] = f'"{bytes(row["sha256"]).hex()}"'
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Content-Disposition"] = f'inline; filename="{row["path"]}"'
    return resp


@bp.delete("/<stored_file:path>", merge_slashes=False)
@require_scope("file:write")
@documented(data=FileDeleteData)
def delete_uploaded_file(path: str) -> Response:
    """Delete one of this client's files (jobs still waiting for it will fail with 3008)."""
    delete_file(g.client["id"], checked_path(path))
    return respond({"path": path, "deleted": "true"})
