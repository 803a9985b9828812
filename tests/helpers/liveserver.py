"""A WSGI app served over real HTTP on loopback, in a thread (for tests that need a URL)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

__all__ = ["Dispatch", "serve"]


class Dispatch:
    """A WSGI app whose target is set after the server has its port (the IdP needs the URL)."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


def serve(app: Any) -> tuple[BaseWSGIServer, threading.Thread]:
    """Serve `app` on a free loopback port in a thread."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
