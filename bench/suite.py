"""`bench/run`: every performance figure of the broker, measured as users meet it, in one table.

moto server and gunicorn run as their own processes, the scheduler as ``broker scheduler``; each
HTTP figure is taken against a baseline measured in the same run (raw boto3 AssumeRole on the
same moto, interleaved call for call); every figure is measured ``--rounds`` times (3) and shown
as the median of the rounds with their spread. Databases are the run's own: a temporary SQLite
file and a PostgreSQL database ``broker_bench_<pid>`` created on 127.0.0.1:5432 and dropped
afterwards. ``--quick`` is a smoke run (one round, small sizes) that CI runs so the benchmarks
keep working; its numbers mean little.

    bench/run [--quick] [--rounds N] [--only issuance,throughput,entitlements,revoke,expiry,
              audit,cli,cloudtrail] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import audit_bench  # noqa: E402
import entitlements_bench  # noqa: E402
import issuance_bench  # noqa: E402
import revoke_latency_bench  # noqa: E402
from cli_startup_bench import wall_ms  # noqa: E402
from deployment import Site, start_site  # noqa: E402
from stack import (  # noqa: E402
    BROKER,
    ROOT,
    Backend,
    Moto,
    PostgresDatabase,
    Processes,
    broker_env,
    started,
)

SCENARIOS = (
    "issuance",
    "throughput",
    "entitlements",
    "revoke",
    "expiry",
    "audit",
    "cli",
    "cloudtrail",
)
LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per round."""

    issuances: int
    warmup: int
    throughput_seconds: float
    entitlements: int
    listings: int
    roles: int
    backlog: int
    revokes: int
    expiring: int
    expiring_roles: int
    audit_events: int
    starts: int  # runs of each audit command on an empty trail (the fastest is its start)
    cli_runs: int


FULL = Sizes(200, 20, 8.0, 10_000, 50, 100, 7000, 10, 10_000, 100, 300_000, 3, 9)
QUICK = Sizes(15, 3, 1.5, 400, 5, 4, 200, 2, 300, 4, 3000, 1, 3)


@dataclass
class Row:
    """One figure of the table: its goal, and the value of every round."""

    figure: str
    goal: str
    unit: str  # x | % | s | ms | ev/s | n
    met: Callable[[float], bool]
    values: list[float] = field(default_factory=list)

    def cell(self, value: float) -> str:
        """A value in this row's unit."""
        if self.unit == "x":
            return f"{value:.2f}x"
        if self.unit == "%":
            return f"{value * 100:.0f} %"
        if self.unit == "s":
            return f"{value:.2f} s"
        if self.unit == "ms":
            return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
        if self.unit == "ev/s":
            return f"{value / 1000:.0f}k"
        return f"{value:.2f}"

    def summary(self) -> tuple[str, str]:
        """(median (min-max), verdict)."""
        if not self.values:
            return "not measured", "-"
        median = statistics.median(self.values)
        spread = f" ({self.cell(min(self.values))}-{self.cell(max(self.values))})"
        shown = self.cell(median) + (spread if len(self.values) > 1 else "")
        return shown, "met" if self.met(median) else "MISSED"


class Table:
    """The rows in the issue's order, and notes printed under the table."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []

    def row(self, key: str, figure: str, goal: str, unit: str, met: Callable[[float], bool]) -> Row:
        """The row ``key`` (created on first use)."""
        if key not in self.rows:
            self.rows[key] = Row(figure, goal, unit, met)
        return self.rows[key]

    def note(self, text: str) -> None:
        """A line of context under the table (absolute numbers behind a ratio, counts)."""
        self.notes.append(text)
        print(f"  {text}", file=sys.stderr, flush=True)

    def print(self) -> None:
        """The table."""
        header = ("figure", "goal", "median (min-max)", "verdict")
        lines = [header] + [(row.figure, row.goal, *row.summary()) for row in self.rows.values()]
        widths = [max(len(line[i]) for line in lines) for i in range(3)]
        print()
        for i, line in enumerate(lines):
            print(
                f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:<{widths[2]}}  {line[3]}"
            )
            if i == 0:
                print("  ".join("-" * w for w in widths) + "  -------")
        if self.notes:
            print()
            for text in self.notes:
                print(text)


@contextmanager
def step(label: str) -> Iterator[None]:
    """Say what is running (standard error), and how long it took."""
    print(f"[bench] {label} ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    yield
    print(f"[bench] {label}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)


def run_site(
    table: Table,
    procs: Processes,
    backend: Backend,
    moto: Moto,
    tmp: Path,
    sizes: Sizes,
    rounds: int,
    only: set[str],
) -> None:
    """Issuance, throughput, listing and revocation latency over HTTP on one backend."""
    name = LABEL[backend.name]
    if not only & {"issuance", "throughput", "entitlements", "revoke"}:
        return
    with step(f"{name}: broker under gunicorn ({sizes.entitlements} entitlements)"):
        site = start_site(
            procs, backend, moto, tmp, entitlements=sizes.entitlements, roles=sizes.roles
        )
    try:
        if "issuance" in only:
            row = table.row(
                f"issuance-{backend.name}",
                f"issuance p50 / raw AssumeRole p50, {name}",
                "<= 1.5x",
                "x",
                lambda v: v <= 1.5,
            )
            for r in range(rounds):
                with step(f"{name}: issuance latency, round {r + 1}"):
                    found = issuance_bench.latency_round(
                        site, sizes.issuances, sizes.warmup if r == 0 else 5
                    )
                row.values.append(found["ratio"])
                table.note(
                    f"{name} round {r + 1}: broker p50 {found['broker_p50_ms']:.2f} ms, raw "
                    f"AssumeRole p50 {found['raw_p50_ms']:.2f} ms "
                    f"(broker adds {found['broker_p50_ms'] - found['raw_p50_ms']:.2f} ms)"
                )
        if "throughput" in only and backend.name == "postgresql":
            throughput(table, site, sizes, rounds)
        if "entitlements" in only:
            row = table.row(
                f"entitlements-{backend.name}",
                f"GET /api/v1/entitlements, {sizes.entitlements} entitlements, 20 groups, "
                f"server p50, {name}",
                "<= 5 ms",
                "ms",
                lambda v: v <= 5.0,
            )
            for r in range(rounds):
                with step(f"{name}: entitlement listing, round {r + 1}"):
                    found = entitlements_bench.listing_round(site, sizes.listings, warmup=3)
                row.values.append(found["server_p50_ms"])
            table.note(f"{name}: the listing names {found['listed']:.0f} entitlements")
        if "revoke" in only:
            revoke(table, procs, site, tmp, sizes, rounds)
    finally:
        site.stop(procs)


def throughput(table: Table, site: Site, sizes: Sizes, rounds: int) -> None:
    """Broker req/s over the raw moto ceiling, 16 clients, 4 gunicorn workers."""
    row = table.row(
        "throughput",
        "throughput, 4 workers, PostgreSQL, 16 clients / raw moto ceiling",
        ">= 50 %",
        "%",
        lambda v: v >= 0.5,
    )
    clients = issuance_bench.Clients()
    try:
        for r in range(rounds):
            with step(f"throughput, round {r + 1}"):
                found = issuance_bench.throughput_round(site, clients, sizes.throughput_seconds)
            row.values.append(found["ratio"])
            failed = f", {found['failed']} failed ({found['error']})" if found["failed"] else ""
            table.note(
                f"throughput round {r + 1}: broker {found['broker_rps']:.0f} req/s, raw moto "
                f"{found['raw_rps']:.0f} req/s{failed}"
            )
    finally:
        clients.close()


def revoke(
    table: Table, procs: Processes, site: Site, tmp: Path, sizes: Sizes, rounds: int
) -> None:
    """Revoke-to-deny latency with the backlog in the database and the scheduler running."""
    name = LABEL[site.backend]
    row = table.row(
        f"revoke-{site.backend}",
        f"API revoke -> deny readable, {sizes.backlog} live sessions of ended grants, p99, {name}",
        "<= 2 s",
        "s",
        lambda v: v <= 2.0,
    )
    with step(f"{name}: seeding {sizes.backlog} ended grants with live sessions"):
        revoke_latency_bench.seed_backlog(site.database_url, site.roles, sizes.backlog)
    with step(f"{name}: scheduler process"):
        site.start_scheduler(procs, tmp)
        warm = revoke_latency_bench.latencies(site, 1)  # the scheduler's first sweep is done
    if warm.unavailable:
        table.note(
            f"{name}: while the scheduler's first sweep ran, the broker answered 503 "
            f"{warm.unavailable} times"
        )
    for r in range(rounds):
        with step(f"{name}: revoke latency, round {r + 1}"):
            outcome = revoke_latency_bench.latencies(site, sizes.revokes)
        found = outcome.seconds
        row.values.append(revoke_latency_bench.p99(found))
        busy = f"; {outcome.unavailable} answers were 503" if outcome.unavailable else ""
        if outcome.timed_out:
            busy += f"; {outcome.timed_out} cut at the 300 s timeout"
        table.note(
            f"{name} revoke round {r + 1}: p50 {statistics.median(found):.2f} s, "
            f"max {max(found):.2f} s over {len(found)}{busy}"
        )


def expiry(table: Table, backend: Backend, moto: Moto, sizes: Sizes, rounds: int) -> None:
    """The scheduler's sweep over grants expiring at once (bench/scheduler_bench.py)."""
    name = LABEL[backend.name]
    row = table.row(
        f"expiry-{backend.name}",
        f"{sizes.expiring} grants expiring at once over {sizes.expiring_roles} roles, "
        f"one sweep, {name}",
        "<= 2 s",
        "s",
        lambda v: v <= 2.0,
    )
    puts = table.row(
        f"expiry-puts-{backend.name}",
        f"  PutRolePolicy per role in that sweep, {name}",
        "1",
        "n",
        lambda v: v == 1.0,
    )
    for r in range(rounds):
        command = [
            sys.executable,
            str(ROOT / "bench" / "scheduler_bench.py"),
            "--grants", str(sizes.expiring),
            "--roles", str(sizes.expiring_roles),
            "--endpoint-url", moto.endpoint_url,
            "--json",
        ]  # fmt: skip
        if backend.pg is not None:
            command += ["--database-url", backend.pg.url]
        with step(f"{name}: expiry sweep, round {r + 1}"):
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"scheduler_bench failed: {done.stderr[-3000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        row.values.append(found["seconds"])
        puts.values.append(found["puts_per_role"])
        calls = found["iam_calls"]
        table.note(
            f"{name} expiry round {r + 1}: {found['ended_by_sweep']} ended, {found['applied']} "
            f"revocations applied, batch {found['batch']}, IAM calls "
            + ", ".join(f"{k}={v}" for k, v in sorted(calls.items()))
        )


def audit(table: Table, backend: Backend, tmp: Path, sizes: Sizes, rounds: int) -> None:
    """Export and verify rates through the ``broker audit`` commands."""
    name = LABEL[backend.name]
    workdir = tmp / f"audit-{backend.name}"
    workdir.mkdir()
    url, empty_url = backend.url("audit"), backend.url("audit_empty")
    with step(f"{name}: building a trail of {sizes.audit_events} events"):
        public, policy_dir = audit_bench.prepare(url, empty_url, sizes.audit_events, workdir)
    full, empty = broker_env(url, policy_dir, None), broker_env(empty_url, policy_dir, None)
    labels = {
        "export_jsonl": "audit export JSON Lines",
        "export_csv": "audit export CSV",
        "export_ocsf": "audit export OCSF",
        "verify_database": "audit verify, database",
        "verify_file": "audit verify, offline export",
    }
    rows = {
        key: table.row(
            f"{key}-{backend.name}",
            f"{label}, events/s, {name}",
            ">= 200k",
            "ev/s",
            lambda v: v >= 200_000,
        )
        for key, label in labels.items()
    }
    for r in range(rounds):
        with step(f"{name}: audit commands, round {r + 1}"):
            found = audit_bench.cli_rates(
                full, empty, public, workdir, sizes.audit_events, starts=sizes.starts
            )
        for key, value in found.items():
            rows[key].values.append(value["rate"])
        table.note(
            f"{name} audit round {r + 1}, seconds for {sizes.audit_events} events (of which the "
            "command's start): "
            + ", ".join(f"{k} {v['wall']:.2f} ({v['start']:.2f})" for k, v in found.items())
        )


def cli(table: Table, sizes: Sizes, rounds: int) -> None:
    """`broker --help` wall time (bench/cli_startup_bench.py)."""
    row = table.row("cli", "broker --help wall time", "<= 150 ms", "ms", lambda v: v <= 150)
    for _ in range(rounds):
        row.values.append(
            statistics.median(wall_ms([BROKER, "--help"]) for _ in range(sizes.cli_runs))
        )


def cloudtrail(table: Table, quick: bool, rounds: int) -> None:
    """CloudTrail attribution rate over 1M records (bench/cloudtrail_bench.py, SQLite)."""
    records = 20_000 if quick else 1_000_000
    row = table.row(
        "cloudtrail",
        f"CloudTrail attribution, records/s ({records:,} records)",
        ">= 50k",
        "ev/s",
        lambda v: v >= 50_000,
    )
    script = Path(__file__).resolve().parent / "cloudtrail_bench.py"
    for r in range(rounds):
        with step(f"CloudTrail attribution, round {r + 1}"):
            done = subprocess.run(
                [sys.executable, str(script), "--records", str(records), "--skip-ingest", "--json"],
                capture_output=True,
                text=True,
                timeout=3600,
            )
        if done.returncode not in (0, 1):
            raise RuntimeError(f"cloudtrail_bench failed: {done.stderr[-3000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        row.values.append(found["rate"])
        table.note(
            f"CloudTrail round {r + 1}: {found['cpu_rate']:,.0f} records per CPU second, "
            f"{found['attributed']:,} attributed, {found['detections']} detections"
        )


def main() -> int:
    """Run what was asked and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one round, small sizes")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure (3)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    table = Table()
    began = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp_name,
        started(Processes()) as procs,
    ):
        tmp = Path(tmp_name)
        pg = None
        if "postgresql" in wanted:
            if PostgresDatabase.available():
                pg = PostgresDatabase()
            else:
                table.note("PostgreSQL is not reachable on 127.0.0.1:5432: its rows are skipped")
        try:
            with step("moto server"):
                moto = Moto(procs, tmp)
            backends = [Backend("sqlite", tmp)] if "sqlite" in wanted else []
            if pg is not None:
                backends.append(Backend("postgresql", tmp, pg))
            for backend in backends:
                run_site(table, procs, backend, moto, tmp, sizes, rounds, only)
                if "expiry" in only:
                    expiry(table, backend, moto, sizes, rounds)
                if "audit" in only:
                    audit(table, backend, tmp, sizes, rounds)
            if "cli" in only:
                with step("broker --help"):
                    cli(table, sizes, rounds)
            if "cloudtrail" in only:
                cloudtrail(table, args.quick, rounds)
        finally:
            procs.stop_all()
            if pg is not None:
                pg.drop()
    table.print()
    mode = "quick (smoke run: the numbers mean little)" if args.quick else f"{rounds} rounds"
    print(f"\n{mode}; {time.perf_counter() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
