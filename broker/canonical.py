"""The one canonical JSON form: what JSON columns store and what the audit chain hashes."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept.

    JSON columns are stored in exactly this form and the audit chain hashes it, so an export can
    copy stored details verbatim.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
