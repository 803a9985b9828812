"""`python -m broker.cli`: the `broker` command."""

from __future__ import annotations

from broker.cli import main

main()
