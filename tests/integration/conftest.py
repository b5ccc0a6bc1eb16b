"""A clean gallery for every test on the stack.

What a test enrols (persons, faces, libraries, uploaded files) is deleted when it ends, and what
a module's fixtures enrolled when the module ends; so every test meets the gallery its own
fixtures made, and the service's duplicate policy (refuse) applies as it ships. Tests that
need no worker run in a rolled-back transaction instead (`db`, `api` in tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Services


@pytest.fixture(scope="module", autouse=True)
def _module_gallery() -> Iterator[None]:
    """What the module's own fixtures enrolled goes when the module ends (the session's
    services may start within the module: then everything since the migrations)."""
    marks = Services.current.gallery_marks() if Services.current else None
    yield
    if Services.current is not None:
        Services.current.clean_gallery(marks or Services.current.baseline)


@pytest.fixture(autouse=True)
def _test_gallery(request: pytest.FixtureRequest) -> Iterator[None]:
    """What the test enrolled goes when it ends (set up after the module's fixtures, so
    theirs stays for the module's other tests)."""
    if "stack" not in request.fixturenames:
        yield
        return
    services: Services = request.getfixturevalue("services")
    marks = services.gallery_marks()
    yield
    services.clean_gallery(marks)
