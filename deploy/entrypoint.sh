#!/bin/sh
# The broker's process entry point, the same in the container image, the systemd units and the
# Helm chart: one mode per process.
#
#   web          gunicorn serving the web app: JSON logs, WEB_CONCURRENCY workers on WEB_HOST:PORT
#                (defaults 2, 0.0.0.0, 8000; see gunicorn.conf.py beside this file)
#   scheduler    the scheduler process (`broker scheduler`)
#   migrate      apply database migrations (`broker db upgrade`), then exit
#   doctor       check configuration, database, identity provider and AWS (`broker doctor`)
#   healthcheck  exit 0 when the web process on this host answers /readyz with 200
#   broker ARGS  any other broker command, e.g. `broker policy check`
#
# The broker's settings are its BROKER_* variables (README.md, Configuration). The variables
# above deliberately do not start with BROKER_: an unknown BROKER_* variable stops the broker.
# Nothing here writes a file: the image runs on a read-only root filesystem.
set -eu

here=$(dirname "$(readlink -f "$0")")
mode=${1:-web}
if [ "$#" -gt 0 ]; then shift; fi

case "$mode" in
  web)
    exec gunicorn --config "$here/gunicorn.conf.py" "$@" 'broker:create_app()'
    ;;
  scheduler)
    exec broker scheduler "$@"
    ;;
  migrate)
    exec broker db upgrade "$@"
    ;;
  doctor)
    exec broker doctor "$@"
    ;;
  healthcheck)
    exec python -c '
import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except urllib.error.HTTPError as exc:
    body = exc.read(2000).decode(errors="replace")
    print(f"not ready ({exc.code}): {body}", file=sys.stderr)
except OSError as exc:
    print(f"not ready: {exc}", file=sys.stderr)
sys.exit(1)
' "http://127.0.0.1:${PORT:-8000}/readyz"
    ;;
  broker)
    exec broker "$@"
    ;;
  *)
    echo "usage: entrypoint.sh web|scheduler|migrate|doctor|healthcheck|broker ARGS... (got '$mode')" >&2
    exit 64
    ;;
esac
