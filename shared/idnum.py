"""PRC resident identity numbers (GB 11643-1999): 17 digits and a check character."""

from __future__ import annotations

import re
from datetime import date

_FORMAT = re.compile(r"^\d{17}[\dX]$")
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def check_character(first17: str) -> str:
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def normalize_id_num(value: str) -> str:
    return value.strip().upper()


def is_valid_id_num(value: str, today: date | None = None) -> bool:
    """True for an 18-character ID with a valid birth date (not in the future) and check digit."""
    if not _FORMAT.match(value):
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if born.year < 1900 or born > (today or date.today()):
        return False
    return check_character(value[:17]) == value[17]


def make_id_num(region: str, born: date, sequence: int) -> str:
    """A well-formed ID number (for tests and synthetic enrolment data)."""
    first17 = f"{region:0>6}{born:%Y%m%d}{sequence % 1000:03d}"
    return first17 + check_character(first17)
