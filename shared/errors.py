"""The one errcode table of the service, and the exception that carries an errcode.

Every failure a client can see is a `FaceLibError` with one of the codes below; the API turns it
into the envelope `{"errcode": N, "errmsg": "...", "data": {...}}` with the HTTP status of its
class. Workers raise the same exceptions, so a job's failure reaches the client (response,
callback or poll) with the same errcode as a synchronous call would give.

Codes are grouped by class (the thousands digit) and never reused; README.md and the OpenAPI
spec list them from `ERRCODES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrCode:
    code: int
    http_status: int
    message: str
    retryable: bool = False  # True: the same request may succeed later (transient)


class E:
    """Namespace of every errcode the service answers with."""

    SUCCESS = ErrCode(0, 200, "SUCCESS")

    # 1xxx: authentication and authorisation
    TOKEN_MISSING = ErrCode(1001, 401, "token missing: send it in the Authorization header")
    TOKEN_INVALID = ErrCode(1002, 401, "token invalid or revoked")
    TOKEN_EXPIRED = ErrCode(1003, 401, "token expired")
    SCOPE_FORBIDDEN = ErrCode(1004, 403, "token lacks the scope this endpoint requires")
    CLIENT_CREDENTIALS_INVALID = ErrCode(1005, 401, "client key or secret invalid")

    # 2xxx: request parameters
    PARAM_MISSING = ErrCode(2001, 400, "required parameter missing")
    PARAM_INVALID = ErrCode(2002, 400, "parameter invalid")
    IDNUM_INVALID = ErrCode(2003, 400, "idNum is not a valid 18-character resident ID number")
    BODY_NOT_JSON = ErrCode(2004, 400, "request body must be a JSON object")
    IDEMPOTENCY_CONFLICT = ErrCode(
        2005, 409, "requestId was already used with a different request body"
    )
    NOT_FOUND_ROUTE = ErrCode(2006, 404, "no such endpoint")
    METHOD_NOT_ALLOWED = ErrCode(2007, 405, "method not allowed on this endpoint")
    BODY_TOO_LARGE = ErrCode(2008, 413, "request body too large")

    # 3xxx: the image and where it comes from
    IMAGE_TOO_LARGE = ErrCode(3001, 413, "image too large: base64 data must be at most 400 KB")
    IMAGE_BASE64_INVALID = ErrCode(3002, 400, "image data is not valid base64")
    IMAGE_UNDECODABLE = ErrCode(3003, 422, "image cannot be decoded (not an image, or truncated)")
    IMAGE_TOO_MANY_PIXELS = ErrCode(3004, 422, "image has too many pixels")
    IMAGE_ORIGIN_UNSUPPORTED = ErrCode(3005, 400, "faceImage.origin not supported")
    IMAGE_FETCH_FAILED = ErrCode(3006, 422, "image could not be fetched from its URL", True)
    IMAGE_URL_REFUSED = ErrCode(3007, 422, "image URL refused by the fetch policy")
    IMAGE_FILE_NOT_FOUND = ErrCode(3008, 404, "no such file on the file server")
    IMAGE_TOO_SMALL = ErrCode(3009, 422, "image too small")

    # 4xxx: the face in the image
    NO_FACE = ErrCode(4001, 422, "no face found in the image")
    MULTIPLE_FACES = ErrCode(4002, 422, "several faces of similar size: send a photo of one person")
    FACE_TOO_SMALL = ErrCode(4003, 422, "face too small")
    FACE_BLURRY = ErrCode(4004, 422, "face too blurry")
    FACE_OUT_OF_FRAME = ErrCode(4005, 422, "face cut by the image border")
    FACE_POSE_EXTREME = ErrCode(4006, 422, "face turned too far from the camera")

    # 5xxx: the person library
    PERSON_NOT_FOUND = ErrCode(5001, 404, "person not found")
    LIBRARY_EMPTY = ErrCode(5002, 404, "the face library is empty")
    FACE_LIMIT_REACHED = ErrCode(5003, 409, "this person already has the maximum number of faces")
    DUPLICATE_IDENTITY = ErrCode(
        5004, 409, "this face already belongs to a person with another idNum"
    )

    # 6xxx: jobs
    TASK_NOT_FOUND = ErrCode(6001, 404, "task not found")
    RESULT_TIMEOUT = ErrCode(
        6002, 202, "result not ready in time: the job goes on, poll the task with taskId", True
    )
    JOB_ATTEMPTS_EXHAUSTED = ErrCode(6003, 500, "the job failed after its maximum attempts", True)
    CALLBACK_NOT_FOUND = ErrCode(6004, 404, "callback delivery not found")

    # 7xxx: load
    RATE_LIMITED = ErrCode(7001, 429, "rate limit exceeded: retry after Retry-After seconds", True)
    BUSY = ErrCode(7002, 503, "service busy: queue full, retry later", True)

    # 9xxx: the service itself
    INTERNAL = ErrCode(9000, 500, "internal error", True)
    UNAVAILABLE = ErrCode(9001, 503, "a backing service is unavailable, retry later", True)


ERRCODES: dict[int, ErrCode] = {
    v.code: v for k, v in vars(E).items() if not k.startswith("_") and isinstance(v, ErrCode)
}


class FaceLibError(Exception):
    """An error a client sees: an errcode, a message (never personal data) and optional data."""

    def __init__(
        self,
        err: ErrCode,
        detail: str | None = None,
        data: dict[str, Any] | None = None,
        errmsg: str | None = None,
    ) -> None:
        self.err = err
        self.detail = detail
        self.data = data or {}
        self._errmsg = errmsg
        super().__init__(self.errmsg)

    @property
    def errcode(self) -> int:
        return self.err.code

    @property
    def errmsg(self) -> str:
        if self._errmsg:
            return self._errmsg
        return f"{self.err.message}: {self.detail}" if self.detail else self.err.message

    def to_dict(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "errmsg": self.errmsg, "data": dict(self.data)}

    @classmethod
    def from_code(
        cls, code: int, errmsg: str | None = None, data: dict[str, Any] | None = None
    ) -> FaceLibError:
        """Rebuild an error stored in a job row (errcode, errmsg)."""
        return cls(ERRCODES.get(code, E.INTERNAL), data=data, errmsg=errmsg)


def envelope(
    data: dict[str, Any] | None = None, err: ErrCode = E.SUCCESS, errmsg: str | None = None
) -> dict[str, Any]:
    """The response envelope every endpoint, callback and poll uses."""
    return {"errcode": err.code, "errmsg": errmsg or err.message, "data": data or {}}
