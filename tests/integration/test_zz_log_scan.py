"""Runs last (file order): no log line of the whole run holds a test idNum, token or secret."""

from __future__ import annotations

from tests.conftest import SENSITIVE, Stack


def test_logs_of_the_run_hold_no_personal_data_or_secrets(stack: Stack) -> None:
    logs = {p.name: p.read_text(errors="replace") for p in stack.log_dir.glob("*.log")}
    assert logs and sum(len(t) for t in logs.values()) > 0
    assert len(SENSITIVE) >= 5  # the run did send idNums and tokens
    leaks = [
        (name, value[:6]) for name, text in logs.items() for value in SENSITIVE if value in text
    ]
    assert leaks == []
    names = ("张三", "审计测试")
    assert not [n for n in names for text in logs.values() if n in text]
