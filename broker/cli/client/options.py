"""Options the engineer's commands share, spelled and explained the same way everywhere."""

from __future__ import annotations

import re

import click

# The shape of an AWS region name (eu-west-1, us-gov-west-1, cn-north-1), as the policy checks it.
REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")


def _region(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not REGION.match(value):
        raise click.BadParameter(f"{value!r} is not an AWS region name such as eu-west-1.")
    return value


duration_option = click.option("--duration", help="How long the credentials last, e.g. 1h.")
reason_option = click.option("--reason", help="Why you need them (recorded in the audit trail).")
region_option = click.option(
    "--region",
    callback=_region,
    help="AWS region for the tools (default: the entitlement's, as the broker says).",
)
format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: the broker's answer as JSON, for scripts.",
)
