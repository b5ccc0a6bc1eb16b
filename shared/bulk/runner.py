"""Runs a bulk enrolment: submits rows for one client and follows their jobs to the end
(see shared/bulk for what makes it resumable)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import db
from shared.bulk.inputs import Row, read_csv, read_folder
from shared.bulk.prepare import Prepared, prepare_row
from shared.bulk.report import Failure, write_report
from shared.db import transaction
from shared.errors import ERRCODES, E, FaceLibError
from shared.jobs import submit_registration
from shared.settings import get_settings


@dataclass
class Summary:
    """The figures of a run, and its failures (for the report)."""

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
