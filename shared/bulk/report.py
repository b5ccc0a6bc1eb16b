"""The report of a bulk enrolment: a CSV of the rows not enrolled, with the masked idNum only."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from shared import crypto
from shared.bulk.inputs import Row

REPORT_COLUMNS = ("line", "idNumMasked", "image", "errcode", "errmsg", "taskId")


@dataclass
class Failure:
    """A row not enrolled: why (errcode, errmsg), and its job when one ran."""

    row: Row
    errcode: int
    errmsg: str
    task_id: str = ""


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
