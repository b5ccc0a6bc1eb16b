"""Bulk enrolment: register many persons from a CSV file or a folder of photos.

Rows go through the same queue as the API's `reg` (`shared.jobs.submit_job`, origin self), so
the import scales with the workers and gets the same checks and errcodes. Rows are submitted
asynchronously, at most `in_flight` at a time, and their jobs are followed in the jobs table.

Resumable: each row's requestId is derived from its idNum and image (`persons.bulk_request_ids`),
so a second run finds the first run's jobs: a row already enrolled is skipped, one still queued
is waited for, one that failed for good is reported again without being resubmitted, and one
that failed for a transient reason (6003, 9001...) is submitted again under its next requestId.
No row is ever enrolled twice.

The report (CSV) lists every row not enrolled, with its line, errcode and errmsg; it holds the
masked idNum only.

    facelib bulk --client branch-0001 --csv people.csv [--report failures.csv]
    facelib bulk --client branch-0001 --folder photos/ [--synthetic-idnums]

CSV columns: idNum,name,personType,customerID,image (image: a path, relative to the CSV file).
Folder: one entry per person, a photo or a sub-folder (its first photo), named
`<idNum>[_<name>]`; with --synthetic-idnums (demonstrations only) any name is accepted and a
valid idNum is made up from it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from shared import crypto, db, persons
from shared.db import transaction
from shared.errors import ERRCODES, E, FaceLibError
from shared.idnum import is_valid_id_num, make_id_num, normalize_id_num
from shared.jobs import request_hash, submit_registration
from shared.settings import Settings, get_settings

PERSON_TYPES = ("normal", "vip", "inner")  # as persons.person_type's CHECK constraint
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CSV_COLUMNS = ("idNum", "name", "personType", "customerID", "image")
REPORT_COLUMNS = ("line", "idNumMasked", "image", "errcode", "errmsg", "taskId")
_LABEL = re.compile(r"^(\d{17}[\dXx])(?:[_ -]+(.+))?$")


@dataclass
class Row:
    """One person to enrol, as read from the input (not yet checked)."""

    line: int
    id_num: str
    name: str
    person_type: str
    customer_id: str | None
    image: Path | None


@dataclass
class Failure:
    row: Row
    errcode: int
    errmsg: str
    task_id: str = ""


@dataclass
class Summary:
    rows: int = 0
    enrolled: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.rows} rows in {self.seconds:.1f} s ({self.rows_per_second:.1f} rows/s):"
            f" {self.enrolled} enrolled, {self.skipped} already enrolled (skipped),"
            f" {self.failed} failed"
        )


# --- input ---------------------------------------------------------------------------------------


def read_csv(path: Path) -> Iterator[Row]:
    """Rows of a CSV file with the columns of CSV_COLUMNS (customerID may be empty)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"idNum", "name", "personType", "image"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(sorted(missing))}")
        for record in reader:
            image = (record.get("image") or "").strip()
            yield Row(
                line=reader.line_num,
                id_num=(record.get("idNum") or "").strip(),
                name=(record.get("name") or "").strip(),
                person_type=(record.get("personType") or "").strip(),
                customer_id=(record.get("customerID") or "").strip() or None,
                image=(path.parent / image) if image else None,
            )


def synthetic_id_num(label: str, taken: set[str]) -> str:
    """A valid, made-up idNum for a demonstration person, the same for a label on every run
    (given the same set of labels): for data sets such as LFW that have no ID numbers."""
    regions = ("110101", "310101", "440301", "610102", "510104", "330106", "420102", "320102")
    n = 0
    while True:
        h = int.from_bytes(hashlib.sha256(f"{label}\0{n}".encode()).digest()[:8], "big")
        born = date(1950, 1, 1) + timedelta(days=h % 18000)
        id_num = make_id_num(regions[(h >> 20) % len(regions)], born, (h >> 40) % 1000)
        if id_num not in taken:
            taken.add(id_num)
            return id_num
        n += 1


def read_folder(folder: Path, *, synthetic_id_nums: bool, person_type: str) -> Iterator[Row]:
    """One row per photo or sub-folder of `folder`, in name order (see the module docstring)."""
    taken: set[str] = set()
    for line, entry in enumerate(sorted(folder.iterdir()), start=1):
        if entry.is_dir():
            photos = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            image = photos[0] if photos else None
            label = entry.name
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            image, label = entry, entry.stem
        else:
            continue
        m = _LABEL.match(label)
        if m:
            id_num, name = m.group(1), (m.group(2) or "")
        elif synthetic_id_nums:
            id_num, name = synthetic_id_num(label, taken), label
        else:
            id_num, name = "", label
        yield Row(line, id_num, name.replace("_", " ").strip(), person_type, None, image)


# --- one row -------------------------------------------------------------------------------------


def _field_error(err: Any, name: str, detail: str | None = None) -> FaceLibError:
    return FaceLibError(err, detail=detail or name, data={"field": name})


def fit_base64_limit(raw: bytes, max_base64_bytes: int) -> bytes:
    """The image as a client would send it: unchanged when its base64 fits the limit, else
    turned upright and re-encoded as JPEG, smaller and smaller until it fits."""
    if 4 * ((len(raw) + 2) // 3) <= max_base64_bytes:
        return raw
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            img = (ImageOps.exif_transpose(im) or im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="image") from exc
    side, quality = 1600, 90
    while True:
        copy = img.copy()
        copy.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        copy.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if 4 * ((len(data) + 2) // 3) <= max_base64_bytes or side <= 200:
            return data
        side, quality = int(side * 0.8), max(70, quality - 5)


@dataclass
class Prepared:
    row: Row
    id_num: str
    name: str
    image: bytes
    request_ids: list[str]
    request_hash: bytes


def prepare_row(row: Row, settings: Settings) -> Prepared:
    """Check a row as the API checks a reg request and read its image; FaceLibError if bad."""
    if not row.id_num:
        raise _field_error(E.PARAM_MISSING, "idNum")
    id_num = normalize_id_num(row.id_num)
    if not is_valid_id_num(id_num):
        raise FaceLibError(E.IDNUM_INVALID, data={"field": "idNum"})
    if not row.name:
        raise _field_error(E.PARAM_MISSING, "name")
    if len(row.name) > 100:
        raise _field_error(E.PARAM_INVALID, "name", "name: longer than 100 characters")
    if not row.person_type:
        raise _field_error(E.PARAM_MISSING, "personType")
    if row.person_type not in PERSON_TYPES:
        raise _field_error(E.PARAM_INVALID, "personType", f"personType: not one of {PERSON_TYPES}")
    if row.customer_id is not None and len(row.customer_id) > 64:
        raise _field_error(E.PARAM_INVALID, "customerID", "customerID: longer than 64 characters")
    if row.image is None:
        raise _field_error(E.PARAM_MISSING, "image")
    try:
        raw = row.image.read_bytes()
    except OSError:
        raise _field_error(E.PARAM_INVALID, "image", "image: file cannot be read") from None
    if len(raw) < 16:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="image data too short")
    image = fit_base64_limit(raw, settings.max_base64_bytes)
    b64 = base64.b64encode(image).decode()
    # the body the API would have received, hashed as the API hashes it (api/persons.py)
    body = {
        "idNum": id_num,
        "name": row.name,
        "personType": row.person_type,
        "customerID": row.customer_id,
        "faceImage": {"type": "image", "origin": "self", "data": b64},
    }
    request_ids = persons.bulk_request_ids(settings, id_num, hashlib.sha256(image).digest())
    return Prepared(row, id_num, row.name, image, request_ids, request_hash(body))


# --- the run -------------------------------------------------------------------------------------


class BulkEnrolment:
    """Submits rows for one client and follows their jobs to the end."""

    def __init__(
        self,
        client_name: str,
        *,
        lib_ids: list[str] | None = None,
        in_flight: int = 32,
        job_timeout: float = 900.0,
        poll_interval: float = 0.25,
        progress: bool = True,
    ) -> None:
        self.settings = get_settings()
        with transaction() as conn:
            client = db.clients.get_client_by_name(conn, client_name)
            if client is None:
                raise ValueError(f"no client named {client_name!r} (facelib client create NAME)")
            if client["status"] != "active":
                raise ValueError(f"client {client_name!r} is disabled")
            if not {"face:register", "admin"} & set(client["scopes"]):
                raise ValueError(f"client {client_name!r} lacks the face:register scope")
            self.library_ids = db.libraries.library_ids(conn, lib_ids or ["default"])
        self.client = client
        self.in_flight = max(1, in_flight)
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.progress = progress
        self.run_id = uuid.uuid4().hex[:12]
        self.summary = Summary()
        # job id -> (rows waiting on it, run index of its requestId, when we started waiting)
        self._pending: dict[str, tuple[list[Prepared], int, float]] = {}

    # outcome bookkeeping
    def _enrolled(self, n: int = 1) -> None:
        self.summary.enrolled += n

    def _fail(self, row: Row, errcode: int, errmsg: str, task_id: str = "") -> None:
        self.summary.failed += 1
        self.summary.failures.append(Failure(row, errcode, errmsg, task_id))

    def _submit(self, item: Prepared, run: int) -> None:
        person = {
            "name": item.name,
            "personType": item.row.person_type,
            "customerID": item.row.customer_id,  # None (empty cell): keep the stored one
        }
        job, _ = submit_registration(
            id_num=item.id_num,
            person=person,
            library_ids=self.library_ids,
            meta={
                "requestId": f"bulk-{self.run_id}",
                "async": True,
                "origin": "self",
                "imageBytes": len(item.image),
                "bulk": True,
            },
            client_id=self.client["id"],
            request_id=item.request_ids[run],
            request_hash=item.request_hash,
            callback_url=None,
            origin="self",
            image=item.image,
            ref=None,
        )
        self._track(str(job["id"]), item, run)

    def _track(self, job_id: str, item: Prepared, run: int) -> None:
        if job_id in self._pending:  # the same row twice in the input: one job serves both
            self._pending[job_id][0].append(item)
        else:
            self._pending[job_id] = ([item], run, time.monotonic())

    def _start_row(self, row: Row) -> bool:
        """Check and submit (or resume) a row; True when it finished at once (bad, skipped)."""
        try:
            item = prepare_row(row, self.settings)
        except FaceLibError as err:
            self._fail(row, err.errcode, err.errmsg)
            return True
        with transaction() as conn:
            previous = db.jobs.jobs_by_request_ids(conn, self.client["id"], item.request_ids)
        if previous:
            last = max(previous, key=lambda j: item.request_ids.index(j["request_id"]))
            run = item.request_ids.index(last["request_id"])
            if last["status"] == "done":
                self.summary.skipped += 1
                return True
            if last["status"] in ("queued", "running"):
                self._track(str(last["id"]), item, run)
                return False
            retryable = ERRCODES.get(last["errcode"], E.INTERNAL).retryable
            if not retryable or run + 1 >= len(item.request_ids):
                self._fail(row, last["errcode"], last["errmsg"], str(last["id"]))
                return True
            run += 1
        else:
            run = 0
        try:
            self._submit(item, run)
        except FaceLibError as err:  # e.g. 2005: the same row twice with different fields
            self._fail(row, err.errcode, err.errmsg)
            return True
        return False

    def _poll(self) -> int:
        """Record the jobs that finished; how many rows that settled."""
        if not self._pending:
            return 0
        with transaction() as conn:
            done = db.jobs.finished_jobs(conn, [uuid.UUID(j) for j in self._pending])
        settled = 0
        for job in done:
            items, _, _ = self._pending.pop(str(job["id"]))
            for item in items:
                if job["status"] == "done":
                    self._enrolled()
                else:
                    self._fail(item.row, job["errcode"], job["errmsg"], str(job["id"]))
            settled += len(items)
        now = time.monotonic()
        for job_id, (items, _, since) in list(self._pending.items()):
            if now - since > self.job_timeout:
                del self._pending[job_id]
                for item in items:
                    self._fail(
                        item.row,
                        E.RESULT_TIMEOUT.code,
                        f"not finished after {self.job_timeout:.0f} s; a rerun picks it up",
                        job_id,
                    )
                settled += len(items)
        return settled

    def run(self, rows: Iterable[Row], total: int | None = None) -> Summary:
        from tqdm import tqdm

        started = time.monotonic()
        source = iter(rows)
        exhausted = False
        bar = tqdm(total=total, unit="row", disable=not self.progress, smoothing=0.05)

        def waiting() -> int:
            return sum(len(items) for items, _, _ in self._pending.values())

        try:
            while True:
                while not exhausted and waiting() < self.in_flight:
                    row = next(source, None)
                    if row is None:
                        exhausted = True
                        break
                    self.summary.rows += 1
                    if self._start_row(row):
                        bar.update(1)
                settled = self._poll()
                bar.update(settled)
                bar.set_postfix(
                    ok=self.summary.enrolled,
                    skipped=self.summary.skipped,
                    failed=self.summary.failed,
                    refresh=False,
                )
                if exhausted and not self._pending:
                    break
                if not settled:
                    time.sleep(self.poll_interval)
        finally:
            bar.close()
            self.summary.seconds = time.monotonic() - started
        return self.summary


def write_report(path: Path, failures: list[Failure]) -> None:
    """The rows not enrolled: line, masked idNum, image, errcode, errmsg, taskId."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(REPORT_COLUMNS)
        for fail in sorted(failures, key=lambda x: x.row.line):
            id_num = fail.row.id_num
            writer.writerow(
                [
                    fail.row.line,
                    crypto.mask_id_num(id_num) if len(id_num) >= 6 else "",
                    str(fail.row.image or ""),
                    fail.errcode,
                    fail.errmsg,
                    fail.task_id,
                ]
            )


def use_local_stack(home: Path) -> None:
    """Without DATABASE_URL / REDIS_URL, talk to the embedded servers `facelib up` runs from
    `home` (it must be running: its workers do the enrolment)."""
    import os

    if not os.environ.get("DATABASE_URL"):
        if not (home / "pg" / "postmaster.pid").exists():
            raise ValueError(f"no DATABASE_URL and no running `facelib up` in {home}")
        from shared.embedded import EmbeddedPostgres

        os.environ["DATABASE_URL"] = EmbeddedPostgres(home / "pg").start()  # finds it running
    if not os.environ.get("REDIS_URL"):
        port = os.environ.get("FACELIB_REDIS_PORT", "6390")
        os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    get_settings.cache_clear()


def enrol(
    client_name: str,
    *,
    csv_path: Path | None = None,
    folder: Path | None = None,
    synthetic_id_nums: bool = False,
    person_type: str = "normal",
    report: Path = Path("bulk-failures.csv"),
    limit: int | None = None,
    **options: Any,
) -> Summary:
    """Enrol every row of a CSV file or a folder; write the failure report; return the figures."""
    if (csv_path is None) == (folder is None):
        raise ValueError("give either a CSV file or a folder")
    if csv_path is not None:
        rows = list(read_csv(csv_path))
    else:
        assert folder is not None
        rows = list(
            read_folder(folder, synthetic_id_nums=synthetic_id_nums, person_type=person_type)
        )
    if limit is not None:
        rows = rows[:limit]
    job = BulkEnrolment(client_name, **options)
    summary = job.run(rows, total=len(rows))
    write_report(report, summary.failures)
    return summary
