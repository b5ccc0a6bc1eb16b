"""Bulk enrolment through the job queue: a CSV of 9 rows (6 people, and 3 bad rows: an invalid
idNum, a text file, a photo with no face) is reported with errcodes; an interrupted run resumes
and a rerun adds nothing (no duplicate job, person or face)."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import FACES, Stack, new_id_num, run_facelib

IMAGES = [  # six people: one face under two idNums would be refused as a duplicate identity
    "kit_harington_1.jpeg",
    "biden_1.jpg",  # 354 KB: its base64 is over the 400 KB limit, so it is re-encoded
    "rose_leslie_1.jpg",
    "obama_720p.jpg",
    "alex_lacamoire_2.jpg",
    "lin_manuel_miranda_1.png",
]


@pytest.fixture(scope="module")
def importer(stack: Stack) -> Iterator[dict[str, Any]]:
    """The client the import runs as; every person it enrolled is erased at the end."""
    client = stack.client(scopes=["face:register"])
    yield client
    from shared import persons
    from shared.db import transaction
    from shared.settings import get_settings

    with stack.db() as conn:
        ids = [
            r["id"]
            for r in conn.execute("SELECT id FROM persons WHERE created_by = %s", (client["id"],))
        ]
    for person_id in ids:
        with transaction() as conn:
            persons.erase_person(conn, get_settings(), person_id)


@pytest.fixture(scope="module")
def people_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    """9 rows; returns the file and, per CSV line, the idNum (for the checks)."""
    folder = tmp_path_factory.mktemp("bulk")
    (folder / "photos").mkdir()
    rows, lines = [], {}
    for i, name in enumerate(IMAGES):
        (folder / "photos" / name).write_bytes((FACES / name).read_bytes())
        id_num = new_id_num()
        rows.append([id_num, f"批量{i}", "normal", f"C{i}" if i % 2 else "", f"photos/{name}"])
    (folder / "photos" / "notes.jpg").write_text("this is not a photo\n" * 20)
    blank = io.BytesIO()
    Image.new("RGB", (400, 400), (128, 128, 128)).save(blank, "JPEG")
    (folder / "photos" / "wall.jpg").write_bytes(blank.getvalue())
    rows.append([new_id_num(), "文本", "vip", "", "photos/notes.jpg"])  # 3003 (worker)
    rows.append([new_id_num(), "白墙", "normal", "", "photos/wall.jpg"])  # 4001 (worker)
    rows.append(["610102199913319999", "坏号", "normal", "", "photos/biden_2.jpg"])  # 2003
    path = folder / "people.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["idNum", "name", "personType", "customerID", "image"])
        for n, row in enumerate(rows, start=2):
            writer.writerow(row)
            lines[n] = row[0]
    return path, lines


def _counts(stack: Stack, client_id: int) -> dict[str, int]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE client_id = %(c)s) AS jobs,"
            " (SELECT count(*) FROM persons WHERE created_by = %(c)s) AS persons,"
            " (SELECT count(*) FROM faces f JOIN persons p ON p.id = f.person_id"
            "   WHERE p.created_by = %(c)s) AS faces",
            {"c": client_id},
        ).fetchone()


def _report(path: Path) -> dict[int, dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {int(r["line"]): r for r in csv.DictReader(f)}


def test_bulk_import_reports_failures_and_resumes_without_duplicates(
    stack: Stack, importer: dict, people_csv: tuple[Path, dict[int, str]], tmp_path: Path
) -> None:
    from shared.bulk.runner import enrol

    path, lines = people_csv
    name = importer["name"]
    # 1. interrupted: the first 6 rows submitted, then the run gives up waiting at once
    first = enrol(
        name, csv_path=path, report=tmp_path / "r1.csv", limit=6, job_timeout=0, progress=False
    )
    assert first.rows == 6 and first.enrolled + first.failed == 6
    submitted = _counts(stack, importer["id"])["jobs"]
    assert submitted == 6

    # 2. the full run: waits for the jobs of run 1 (no resubmission), submits the rest
    second = enrol(name, csv_path=path, report=tmp_path / "r2.csv", progress=False)
    assert (second.rows, second.enrolled + second.skipped, second.failed) == (9, 6, 3)
    assert second.rows_per_second > 0 and "9 rows in" in second.line()
    counts = _counts(stack, importer["id"])
    assert counts == {"jobs": 8, "persons": 6, "faces": 6}  # the bad idNum never became a job
    report = _report(tmp_path / "r2.csv")
    assert {n: int(r["errcode"]) for n, r in report.items()} == {8: 3003, 9: 4001, 10: 2003}
    assert all(r["errmsg"] for r in report.values())
    text = (tmp_path / "r2.csv").read_text(encoding="utf-8")
    assert not [i for i in lines.values() if i in text]  # masked idNums only
    assert report[8]["idNumMasked"] == lines[8][:3] + "*" * 12 + lines[8][-3:]

    # 3. a rerun (through the CLI): everything skipped or reported again, nothing new
    args = ["bulk", "--client", name, "--csv", str(path), "--report", str(tmp_path / "r3.csv")]
    out = run_facelib([*args, "--no-progress"], stack.env, 120)
    assert out.returncode == 1, out.stderr  # 1: some rows failed
    assert "9 rows in" in out.stdout and "6 already enrolled (skipped), 3 failed" in out.stdout
    assert _counts(stack, importer["id"]) == counts
    assert set(_report(tmp_path / "r3.csv")) == {8, 9, 10}

    # the re-encoded photo went in under the base64 limit, as a client would send it
    with stack.db() as conn:
        sizes = [
            r["b"]
            for r in conn.execute(
                "SELECT (request_meta ->> 'imageBytes')::int AS b FROM jobs WHERE client_id = %s",
                (importer["id"],),
            )
        ]
    assert max(sizes) * 4 / 3 <= 400 * 1024
    assert len((FACES / "biden_1.jpg").read_bytes()) * 4 / 3 > 400 * 1024


def test_bulk_refuses_an_unknown_client(stack: Stack, people_csv: tuple[Path, dict]) -> None:
    from shared.bulk.runner import enrol

    with pytest.raises(ValueError, match="no client named"):
        enrol("no-such-client", csv_path=people_csv[0], progress=False)


def test_folder_rows_with_synthetic_idnums(tmp_path: Path) -> None:
    from shared.bulk.inputs import read_folder
    from shared.bulk.prepare import fit_base64_limit
    from shared.idnum import is_valid_id_num

    for person in ("Ann_Smith", "Bo_Li"):
        (tmp_path / person).mkdir()
        (tmp_path / person / f"{person}_0001.jpg").write_bytes(b"x")
    (tmp_path / "110101199003070011_Wang_Wu.jpg").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("skipped")
    rows = list(read_folder(tmp_path, synthetic_id_nums=True, person_type="vip"))
    assert [r.name for r in rows] == ["Wang Wu", "Ann Smith", "Bo Li"]
    assert rows[0].id_num == "110101199003070011"
    assert all(is_valid_id_num(r.id_num) and r.person_type == "vip" for r in rows)
    assert len({r.id_num for r in rows}) == 3
    again = list(read_folder(tmp_path, synthetic_id_nums=True, person_type="vip"))
    assert [r.id_num for r in again] == [r.id_num for r in rows]  # stable: resumable
    without = list(read_folder(tmp_path, synthetic_id_nums=False, person_type="normal"))
    assert [r.id_num for r in without] == ["110101199003070011", "", ""]  # reported as 2001

    big = (FACES / "obama_3.jpg").read_bytes()
    small = fit_base64_limit(big, 400 * 1024)
    assert len(base64.b64encode(small)) <= 400 * 1024 < len(base64.b64encode(big))
    assert fit_base64_limit(b"tiny" * 10, 400 * 1024) == b"tiny" * 10
