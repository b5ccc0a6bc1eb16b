"""The layout README's architecture map describes, checked on the source: who may import whom,
where SQL runs, where the environment is read. A change that breaks a rule fails here, naming
the file and line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "shared")


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


MODULES = dict(_modules())


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _top(name: str) -> str:
    return name.split(".")[0]


# (files the rule covers, imports they must not make, why)
IMPORT_RULES = [
    (
        lambda f: f.startswith("shared/") and not f.startswith("shared/cli/"),
        ("api", "worker"),
        "shared/ is what api and worker both use; only the CLI (shared/cli/) starts them",
    ),
    (
        lambda f: f.startswith("api/"),
        ("worker", "dlib", "face_recognition", "onnxruntime", "celery"),
        "the API sends tasks by name and never loads a model",
    ),
    (
        lambda f: f.startswith("worker/engine/"),
        ("api", "celery", "psycopg", "flask", "redis", "shared.db"),
        "the engine is pure: image bytes in, embeddings out",
    ),
]


def test_the_module_list_is_not_empty() -> None:
    assert {"api/faces.py", "shared/db/pool.py", "worker/engine/engine.py"} <= set(MODULES)


@pytest.mark.parametrize("covers,forbidden,why", IMPORT_RULES, ids=["shared", "api", "engine"])
def test_imports_follow_the_map(covers, forbidden: tuple[str, ...], why: str) -> None:
    broken = [
        f"{f}:{line} imports {name}"
        for f, tree in MODULES.items()
        if covers(f)
        for line, name in _imports(tree)
        if _top(name) in forbidden or any(name == b or name.startswith(b + ".") for b in forbidden)
    ]
    assert not broken, f"{why}: {broken}"


def _calls(tree: ast.Module, attr: str) -> Iterator[int]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attr
        ):
            yield node.lineno


def test_sql_runs_only_in_the_repositories() -> None:
    outside = [
        f"{f}:{line}"
        for f, tree in MODULES.items()
        if not f.startswith("shared/db/")
        for attr in ("execute", "executemany", "cursor")
        for line in _calls(tree, attr)
    ]
    assert not outside, f"SQL outside shared/db/: {outside}"
    # and the rule is not vacuous: the repositories do run SQL
    assert any(_calls(MODULES["shared/db/jobs.py"], "execute"))


def test_only_settings_and_the_cli_wiring_read_the_environment() -> None:
    allowed = {"shared/settings.py", "shared/cli/wiring.py"}
    readers = []
    for f, tree in MODULES.items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("environ", "getenv", "putenv", "environb")
            ):
                readers.append(f"{f}:{node.lineno}")
    assert [r for r in readers if r.split(":")[0] not in allowed] == []
    assert any(r.startswith("shared/settings.py:") for r in readers)
