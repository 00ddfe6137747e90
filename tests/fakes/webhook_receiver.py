"""A webhook receiver served over real HTTP on 127.0.0.1: records every request and answers with
the status tests choose (fixed, or failing a fraction at random), counting connections."""

from __future__ import annotations

import random
import socketserver
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Received:
    """One request: its headers (lower-cased names) and body."""

    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """Records requests; `status` answers them (a 3xx carries `location`), `failure_rate` turns
    that share of them into 500s at random."""

    def __init__(self, status: int = 200, *, failure_rate: float = 0.0, seed: int = 7) -> None:
        self.status = status
        self.failure_rate = failure_rate
        self.location = ""
        self.requests: list[Received] = []
        self.failures = 0
        self.connections = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    fail = receiver._random.random() < receiver.failure_rate
                    status = 500 if fail else receiver.status
                    if fail:
                        receiver.failures += 1
                    else:
                        receiver.requests.append(
                            Received(
                                self.path, {k.lower(): v for k, v in self.headers.items()}, body
                            )
                        )
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                with receiver._lock:
                    receiver.connections += 1
                return True

        self._server: socketserver.TCPServer = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[Received]:
        """A copy of the requests answered with `status`."""
        with self._lock:
            return list(self.requests)
