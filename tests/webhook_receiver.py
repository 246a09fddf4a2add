"""A webhook receiver for tests: a threaded HTTP server on 127.0.0.1 that checks every
request with the reference `standardwebhooks` library, as a real receiver would, and
records the verified ones in arrival order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.servers import free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    id: str
    timestamp: str
    path: str
    type: str
    call_id: str
    body: bytes
    headers: dict[str, str]
    at: float


class Receiver:
    """A webhook receiver: verifies every request, records the verified ones in arrival
    order, notes two requests of one (path, call) in flight at once, and answers what
    `answer(request, attempt)` says: (status, seconds to wait first)."""

    def __init__(self, port: int | None = None, secret: str = SECRET) -> None:
        self.port = port or free_port()
        self.secret = secret
        self.received: list[Received] = []
        self.rejected = 0
        self.overlaps: list[tuple[str, str]] = []
        self.max_in_flight = 0
        self.answer: Callable[[Received, int], tuple[int, float]] = lambda r, n: (200, 0.0)
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str], int] = {}
        self._total_in_flight = 0
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hooks") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError:
                    with receiver._lock:
                        receiver.rejected += 1
                    self._reply(400)
                    return
                got = Received(headers["webhook-id"], headers["webhook-timestamp"], self.path,
                               payload["type"], payload["data"]["call_id"], body, headers,
                               time.time())  # fmt: skip
                key = (self.path, got.call_id)
                with receiver._lock:
                    receiver.received.append(got)
                    attempt = sum(1 for r in receiver.received if r.id == got.id)
                    receiver._in_flight[key] = receiver._in_flight.get(key, 0) + 1
                    if receiver._in_flight[key] > 1:
                        receiver.overlaps.append(key)
                    receiver._total_in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight,
                                                 receiver._total_in_flight)  # fmt: skip
                status, wait = receiver.answer(got, attempt)
                time.sleep(wait)
                with receiver._lock:
                    receiver._in_flight[key] -= 1
                    receiver._total_in_flight -= 1
                self._reply(status)

            def _reply(self, status: int) -> None:
                text = b"ok" if status < 300 else b"receiver says no"
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:
                    pass  # the sender gave up waiting (a hang test)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True  # a hanging handler must not hold the test's end
        server.block_on_close = False
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        with self._lock:
            return [r.id for r in self.received]
