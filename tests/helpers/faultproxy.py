"""An HTTP proxy in front of moto that counts requests on the wire and injects faults.

Use as ``from faultproxy import FaultProxy``. Point a client at ``proxy.endpoint_url``; each
request takes the next fault from ``script`` (forward when the script is used up), and
``proxy.calls`` lists the AWS actions that reached the proxy, in order.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, urlsplit

Fault = Literal["forward", "500", "throttle", "gateway", "drop", "timeout"]
Answer = tuple[int, list[tuple[str, str]], bytes]

_ERROR = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
    "<RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
)
ANSWERS: dict[str, tuple[int, str]] = {
    "500": (500, _ERROR.format(kind="Receiver", code="InternalFailure", message="Oops")),
    "throttle": (400, _ERROR.format(kind="Sender", code="Throttling", message="Rate exceeded")),
    "gateway": (504, "<html><body>504 Gateway Time-out</body></html>"),
}
"""Answers given without forwarding, as (HTTP status, body): AWS's own errors, and a gateway's
timeout (which leaves open whether the request reached AWS)."""


class FaultProxy:
    """A threaded proxy on 127.0.0.1 and a free port; a context manager.

    ``500`` and ``throttle`` answer as AWS does, ``gateway`` as a proxy whose upstream timed out;
    ``drop`` forwards the request to moto and closes the connection without answering (AWS acted,
    the answer is lost); ``timeout`` forwards it and answers only after ``hold_seconds``.
    """

    def __init__(self, upstream: str, script: Iterable[Fault] = (), hold_seconds: float = 2.0):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._script = list(script)
        self._lock = threading.Lock()
        self.hold_seconds = hold_seconds
        self.calls: list[str] = []
        self.upstream_answers: list[int] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def queue(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, in order (then forward again)."""
        with self._lock:
            self._script.extend(faults)

    def _next(self, action: str) -> Fault:
        with self._lock:
            self.calls.append(action)
            return self._script.pop(0) if self._script else "forward"

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            upstream.request(method, path, body=body, headers=headers)
            answer = upstream.getresponse()
            with self._lock:
                self.upstream_answers.append(answer.status)
            return answer.status, answer.getheaders(), answer.read()
        finally:
            upstream.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = parse_qs(body.decode(errors="replace")).get("Action", ["?"])[0]
                fault = proxy._next(action)
                if fault in ANSWERS:
                    status, text = ANSWERS[fault]
                    self._answer(status, [("Content-Type", "text/xml")], text.encode())
                    return
                answer = proxy._forward("POST", self.path, dict(self.headers.items()), body)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(proxy.hold_seconds)
                self._answer(*answer)

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers:
                        if name.lower() not in {"content-length", "connection", "date", "server"}:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting (the timeout fault)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep test output readable

        return Handler

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
