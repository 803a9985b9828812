"""GET /api/v1/entitlements under gunicorn: server time with 10,000 entitlements in force.

The person is in 20 of the policy benchmark's 2,000 groups (about 200 eligible entitlements).
Server time is gunicorn's own measure of each request (the access log's ``duration_ms``, from
reading the request to the last byte of the answer), so the client's and the network's share is
left out. Used by ``bench/run``; on its own: ``python bench/entitlements_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import LISTER, Site, start_site  # noqa: E402
from stack import Backend, Moto, PostgresDatabase, Processes, request, started  # noqa: E402

PATH = "/api/v1/entitlements"


def listing_round(site: Site, n: int, warmup: int) -> dict[str, float]:
    """``n`` listings after ``warmup``; the median server time (ms) and how many were listed."""
    token = site.tokens[LISTER]
    listed = 0
    for _ in range(warmup):
        request(site.web.port, "GET", PATH, token=token)
    seen = len(site.web.access_durations_ms(PATH))
    for _ in range(n):
        status, answer = request(site.web.port, "GET", PATH, token=token)
        if status != 200:
            raise RuntimeError(f"listing failed ({status}): {answer}")
        listed = len(answer["entitlements"])
    durations: list[float] = []
    for _ in range(50):  # the access line is written just after the answer
        durations = site.web.access_durations_ms(PATH)[seen:]
        if len(durations) >= n:
            break
        time.sleep(0.05)
    return {"server_p50_ms": statistics.median(durations), "listed": float(listed)}


def main() -> None:
    """Print the figure for each backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count, n = (1000, 10) if args.quick else (10_000, 50)
    with tempfile.TemporaryDirectory() as tmp_name, started(Processes()) as procs:
        tmp = Path(tmp_name)
        moto = Moto(procs, tmp)
        pg = PostgresDatabase() if PostgresDatabase.available() else None
        try:
            backends = [Backend("sqlite", tmp)] + ([Backend("postgresql", tmp, pg)] if pg else [])
            for backend in backends:
                site = start_site(procs, backend, moto, tmp, entitlements=count)
                figures = listing_round(site, n, warmup=5)
                print(
                    f"{backend.name:<10} {count} entitlements: server p50 "
                    f"{figures['server_p50_ms']:.2f} ms ({figures['listed']:.0f} listed)"
                )
                site.stop(procs)
        finally:
            procs.stop_all()
            if pg is not None:
                pg.drop()


if __name__ == "__main__":
    main()
