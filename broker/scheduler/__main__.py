"""`python -m broker.scheduler`: the scheduler command without the full `broker` CLI."""

from __future__ import annotations

from flask.cli import FlaskGroup

from broker.cli import _load_app
from broker.scheduler.cli import scheduler_command

if __name__ == "__main__":
    group = FlaskGroup(create_app=_load_app, add_version_option=False, load_dotenv=False)
    group.add_command(scheduler_command)
    group(args=["scheduler"], prog_name="broker")
