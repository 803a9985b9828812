"""The "a skip fails CI" rule holds for collection-time skips too (a separate pytest run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"
CASES = {
    "test_module_skip.py": "import pytest\npytest.skip('no node', allow_module_level=True)\n",
    "test_importorskip.py": "import pytest\npytest.importorskip('no_such_module_here')\n",
    "test_runtime_skip.py": "import pytest\ndef test_x():\n    pytest.skip('later')\n",
}


def _run(tmp_path: Path, name: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(CASES[name])
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(HELPERS)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "ci_skips", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / name)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_skips_fail_in_ci_and_only_there(tmp_path: Path, name: str) -> None:
    in_ci = _run(tmp_path, name, ci=True)
    assert in_ci.returncode != 0, in_ci.stdout
    assert "skipped" in in_ci.stdout and "in CI" in in_ci.stdout, in_ci.stdout
    locally = _run(tmp_path, name, ci=False)
    assert locally.returncode in (0, 5), locally.stdout  # skipped (or nothing ran): not failed
