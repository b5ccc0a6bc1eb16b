"""The rows of a bulk enrolment: read from a CSV file or a folder of photos (see shared/bulk)."""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from shared.idnum import make_id_num

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CSV_COLUMNS = ("idNum", "name", "personType", "customerID", "image")
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
