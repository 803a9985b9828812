"""Issuance over HTTP: the broker under gunicorn against raw boto3 AssumeRole on the same moto.

Latency: broker issuances (POST /api/v1/credentials) and raw ``assume_role`` calls alternate one
for one, so both see the same machine at the same moment; the figure is the ratio of their
medians. Throughput: 16 clients (4 processes x 4 threads) issue for a fixed time against the
broker, and the same 16 clients call moto directly for the same time (the raw ceiling), one
after the other within the round; the figure is broker req/s over raw req/s.

Used by ``bench/run`` (rows "issuance p50 / raw AssumeRole p50" and "throughput"); runnable on
its own too: ``python bench/issuance_bench.py [--quick]`` prints the same figures.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment import ISSUER, Site, start_site  # noqa: E402
from stack import Backend, Moto, PostgresDatabase, Processes, request, started  # noqa: E402

BODY = {"entitlement": "bench", "duration": "1h"}
CLIENT_PROCESSES = 4
CLIENT_THREADS = 4


def issue(site: Site, conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
    """One POST /api/v1/credentials."""
    return request(
        site.web.port,
        "POST",
        "/api/v1/credentials",
        token=site.tokens[ISSUER],
        body=BODY,
        conn=conn,
    )


def latency_round(site: Site, n: int, warmup: int) -> dict[str, float]:
    """Interleave n broker issuances with n raw AssumeRole calls; medians and their ratio."""
    sts = site.moto.client("sts")
    broker: list[float] = []
    raw: list[float] = []
    for i in range(warmup + n):
        start = time.perf_counter()
        status, answer = issue(site)
        took = time.perf_counter() - start
        if status != 201:
            raise RuntimeError(f"issuance failed ({status}): {answer}")
        start = time.perf_counter()
        sts.assume_role(
            RoleArn=site.issue_role,
            RoleSessionName=f"raw-{i}-{uuid.uuid4().hex[:8]}",
            DurationSeconds=3600,
        )
        raw_took = time.perf_counter() - start
        if i >= warmup:
            broker.append(took)
            raw.append(raw_took)
    b50, r50 = statistics.median(broker) * 1000, statistics.median(raw) * 1000
    return {"broker_p50_ms": b50, "raw_p50_ms": r50, "ratio": b50 / r50}


# -- throughput -------------------------------------------------------------------------------


def _client_process(
    kind: str, target: dict[str, Any], threads: int, start_at: float, seconds: float
) -> tuple[int, int, str]:
    """One client process: ``threads`` threads in a closed loop; (ok, failed, a failure)."""
    end = start_at + seconds
    ok = [0] * threads
    failed = [0] * threads
    last_error = [""]

    def broker_loop(slot: int) -> None:
        port, token = target["port"], target["token"]
        while time.time() < start_at:
            time.sleep(0.001)
        while True:
            status, answer = request(port, "POST", "/api/v1/credentials", token=token, body=BODY)
            done = time.time()
            if done >= end:
                return
            if status == 201:
                ok[slot] += 1
            else:
                failed[slot] += 1
                last_error[0] = f"{status}: {str(answer)[:200]}"

    def raw_loop(slot: int) -> None:
        import boto3
        from botocore.config import Config

        sts = boto3.session.Session().client(
            "sts",
            region_name="us-east-1",
            endpoint_url=target["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}),
        )
        sts.get_caller_identity()  # connect and load the model before the clock starts
        while time.time() < start_at:
            time.sleep(0.001)
        n = 0
        while True:
            n += 1
            try:
                sts.assume_role(
                    RoleArn=target["role_arn"],
                    RoleSessionName=f"raw-{slot}-{n}-{uuid.uuid4().hex[:6]}",
                    DurationSeconds=3600,
                )
                good = True
            except Exception as exc:  # noqa: BLE001 - counted, reported
                good = False
                last_error[0] = repr(exc)[:200]
            if time.time() >= end:
                return
            if good:
                ok[slot] += 1
            else:
                failed[slot] += 1

    loop = broker_loop if kind == "broker" else raw_loop
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(ok), sum(failed), last_error[0]


class Clients:
    """16 clients: a pool of 4 processes x 4 threads, kept across rounds."""

    def __init__(self) -> None:
        self.pool = ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=get_context("spawn"))
        list(self.pool.map(_noop, range(CLIENT_PROCESSES)))  # spawn them before timing

    def run(self, kind: str, target: dict[str, Any], seconds: float) -> tuple[float, int, str]:
        """Requests per second over ``seconds``, failures, and one failure's text."""
        start_at = time.time() + 1.5  # every client ready (boto3 model loaded) before the clock
        futures = [
            self.pool.submit(_client_process, kind, target, CLIENT_THREADS, start_at, seconds)
            for _ in range(CLIENT_PROCESSES)
        ]
        results = [f.result() for f in futures]
        ok = sum(r[0] for r in results)
        failed = sum(r[1] for r in results)
        error = next((r[2] for r in results if r[2]), "")
        return ok / seconds, failed, error

    def close(self) -> None:
        """Stop the client processes."""
        self.pool.shutdown()


def _noop(_: int) -> None:
    return None


def throughput_round(site: Site, clients: Clients, seconds: float) -> dict[str, Any]:
    """Raw ceiling, then the broker, for the same time with the same 16 clients."""
    raw_rps, raw_failed, raw_error = clients.run(
        "raw", {"endpoint_url": site.moto.endpoint_url, "role_arn": site.issue_role}, seconds
    )
    rps, failed, error = clients.run(
        "broker", {"port": site.web.port, "token": site.tokens[ISSUER]}, seconds
    )
    return {
        "broker_rps": rps,
        "raw_rps": raw_rps,
        "ratio": rps / raw_rps if raw_rps else 0.0,
        "failed": failed + raw_failed,
        "error": error or raw_error,
    }


def main() -> None:
    """Run latency (SQLite, PostgreSQL) and throughput (PostgreSQL) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, warmup, seconds = (20, 5, 2.0) if args.quick else (200, 20, 8.0)
    with tempfile.TemporaryDirectory() as tmp_name, started(Processes()) as procs:
        tmp = Path(tmp_name)
        moto = Moto(procs, tmp)
        pg = PostgresDatabase() if PostgresDatabase.available() else None
        try:
            backends = [Backend("sqlite", tmp)] + ([Backend("postgresql", tmp, pg)] if pg else [])
            for backend in backends:
                site = start_site(procs, backend, moto, tmp, entitlements=200)
                figures = latency_round(site, n, warmup)
                print(
                    f"{backend.name:<10} broker p50 {figures['broker_p50_ms']:6.2f} ms  raw p50 "
                    f"{figures['raw_p50_ms']:6.2f} ms  ratio {figures['ratio']:.2f}x"
                )
                if backend.name == "postgresql":
                    clients = Clients()
                    try:
                        t = throughput_round(site, clients, seconds)
                    finally:
                        clients.close()
                    print(
                        f"throughput: broker {t['broker_rps']:.0f} req/s, raw {t['raw_rps']:.0f} "
                        f"req/s, ratio {t['ratio']:.0%} ({t['failed']} failed {t['error']})"
                    )
                site.stop(procs)
        finally:
            procs.stop_all()
            if pg is not None:
                pg.drop()


if __name__ == "__main__":
    main()
