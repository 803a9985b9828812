"""In CI (`CI` set), a skipped test is a failure: nothing may pass by not running.

Run-time skips (`pytest.skip()`, `skipif` marks) and collection-time skips (a module-level
`pytest.skip(..., allow_module_level=True)`, `pytest.importorskip`) both fail the run there.
Loaded by tests/conftest.py; a plugin module so it can be tested in a separate pytest run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test skipped while running fails in CI (xfail stays xfail)."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """A module skipped while being collected fails in CI too."""
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped at collection in CI: {report.longrepr}"
