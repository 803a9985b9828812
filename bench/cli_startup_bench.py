"""CLI startup benchmark: wall time of `broker --help` and of the engineer's commands' help.

Each command runs RUNS times in a fresh process (the console script, as an engineer runs it);
the minimum is the machine's floor, the median what a person feels. Goal: `broker --help`
within 150 ms. Also lists any server library (Flask, SQLAlchemy, ...) the run imported.

Run: .venv/bin/python bench/cli_startup_bench.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 15
GOAL_MS = 150.0
BROKER = str(Path(sys.executable).parent / "broker")
COMMANDS = (
    ("--help",),
    ("--version",),
    ("creds", "--help"),
    ("credential-process", "--help"),
    ("exec", "--help"),
)
HEAVY = ("flask", "werkzeug", "sqlalchemy", "alembic", "authlib", "psycopg", "requests", "boto3")
PROBE = (
    "import json, sys\n"
    "from broker.cli import build\n"
    "try:\n"
    "    build().main(sys.argv[1:], prog_name='broker')\n"
    "except SystemExit:\n"
    "    pass\n"
    f"print(json.dumps(sorted({{m.partition('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n"
)


def wall_ms(argv: list[str]) -> float:
    """Milliseconds one run takes, start to exit."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    """Print the figures."""
    floor = [wall_ms([sys.executable, "-c", "pass"]) for _ in range(RUNS)]
    label = "python -c pass"
    print(f"{label:<34}min {min(floor):6.1f} ms  median {statistics.median(floor):6.1f} ms")
    for args in COMMANDS:
        times = [wall_ms([BROKER, *args]) for _ in range(RUNS)]
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
        )
        loaded = json.loads(probe.stdout.strip().splitlines()[-1])
        label = "broker " + " ".join(args)
        print(
            f"{label:<34}min {min(times):6.1f} ms  median {statistics.median(times):6.1f} ms"
            f"  heavy imports: {', '.join(loaded) or 'none'}"
        )
    help_median = statistics.median(wall_ms([BROKER, "--help"]) for _ in range(RUNS))
    verdict = "within" if help_median <= GOAL_MS else "OVER"
    print(f"broker --help median {help_median:.1f} ms: {verdict} the {GOAL_MS:.0f} ms goal")


if __name__ == "__main__":
    main()
