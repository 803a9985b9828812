"""A separate broker process issuing credentials concurrently (for multi-process audit tests).

Usage: python issue_worker.py CONFIG_JSON TOKEN COUNT THREADS — prints one JSON line of results.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from broker import create_app


def main() -> None:
    """Issue COUNT credentials with THREADS threads through the API; print status counts."""
    config, token, count, threads = json.loads(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:5])
    app = create_app(config)

    errors: list[str] = []

    def issue(_: int) -> int:
        client = app.test_client()
        response = client.post(
            "/api/v1/credentials",
            json={"entitlement": "app-read"},
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code != 201:
            errors.append(response.get_data(as_text=True)[:300])
        return response.status_code

    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(issue, range(count)))
    for message in sorted(set(errors))[:5]:
        print(f"error: {message}", file=sys.stderr)
    print(json.dumps({str(s): statuses.count(s) for s in set(statuses)}))


if __name__ == "__main__":
    main()
