"""A fake card-payment provider served over real HTTP on 127.0.0.1, with faults tests can order."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

# The contract (docs/payments.md describes it for people):
#   Authorization: Bearer <secret>                      else 401 authentication_error
#   POST /v1/charges  amount, currency, source, description (form-encoded)
#       Idempotency-Key required; 200 charge | 402 card_error {code, decline_code}
#   POST /v1/refunds  charge, amount
#       Idempotency-Key required; 200 refund | 400 amount_too_large | 404 resource_missing
#   GET  /v1/charges?idempotency_key=<Idempotency-Key of the charge>
#       200 {"object": "list", "data": [charge]} with zero or one charge
# A POST with a key seen before replays the first status and body (Idempotent-Replayed: true);
# the same key with other parameters is 400 idempotency_error. Declined charges are stored too.

SECRET_KEY = "sk_test_fake_provider_secret"
SUCCEEDING_TOKENS = frozenset({"tok_visa", "tok_mastercard"})
DECLINE_CODES = {"tok_declined": "card_declined", "tok_insufficient_funds": "insufficient_funds"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as tests may want to check it."""

    method: str
    path: str
    idempotency_key: str | None
    authorized: bool


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status", "hang_before", "hang_after"
    status: int = 503


@dataclass
class _Stored:
    fingerprint: tuple[str, str, tuple[tuple[str, str], ...]]
    status: int
    body: dict[str, Any]


@dataclass
class _State:
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by charge id
    charge_by_key: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> charge id
    charges_created: collections.Counter[str] = field(default_factory=collections.Counter)
    lookups: collections.Counter[str] = field(default_factory=collections.Counter)  # by key
    responses: dict[str, _Stored] = field(default_factory=dict)  # Idempotency-Key -> first answer


class FakePaymentProvider:
    """Serves the contract above; `fail_next`, `hang_next` and `delay` script its misbehaviour."""

    def __init__(self, *, secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self.hang_seconds = 5.0
        self.delay_seconds = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open = threading.Event()  # cleared by hold(): requests wait until release()
        self._open.set()
        self._faults: collections.deque[_Fault] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Returns http://127.0.0.1:<port> of the running server."""
        assert self._server is not None, "start() the provider first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakePaymentProvider:
        """Starts serving on a free port in a daemon thread."""
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server = server
        # A short poll interval keeps stop() quick; serve_forever checks for shutdown that often.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wakes hanging handlers, stops serving and frees the port."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakePaymentProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def fail_next(self, count: int, *, status: int = 503) -> None:
        """Answers the next `count` requests with `status` without processing them."""
        with self._lock:
            self._faults.extend(_Fault("status", status) for _ in range(count))

    def hang_next(self, count: int, *, processed: bool = True) -> None:
        """Leaves the next `count` requests unanswered for `hang_seconds`.

        With `processed`, each is carried out first (the charge is made, only the answer is
        lost); otherwise it is dropped without effect.
        """
        with self._lock:
            kind = "hang_after" if processed else "hang_before"
            self._faults.extend(_Fault(kind) for _ in range(count))

    def clear_faults(self) -> None:
        """Forgets every scripted fault that has not happened yet."""
        with self._lock:
            self._faults.clear()

    def delay(self, seconds: float) -> None:
        """Makes every later request wait `seconds` before it is processed and answered."""
        self.delay_seconds = seconds

    def hold(self) -> None:
        """Makes every request wait, before it is processed, until `release` (or `stop`): the
        calls that reach the provider meanwhile are certainly in progress."""
        self._open.clear()

    def release(self) -> None:
        """Lets the held requests, and every later one, through."""
        self._open.set()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Returns every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def charges_created(self, idempotency_key: str) -> int:
        """Returns how many charges were created under the Idempotency-Key `idempotency_key`."""
        with self._lock:
            return self._state.charges_created[idempotency_key]

    def lookups(self) -> dict[str, int]:
        """Returns how many times each charge Idempotency-Key was looked up (GET /v1/charges)."""
        with self._lock:
            return dict(self._state.lookups)

    def total_charges_created(self) -> int:
        """Returns how many charges were created under any key."""
        with self._lock:
            return sum(self._state.charges_created.values())

    def charge(self, charge_id: str) -> dict[str, Any]:
        """Returns a copy of the charge object `charge_id`."""
        with self._lock:
            return dict(self._state.charges[charge_id])

    # The handler side: everything below runs on the server's request threads.

    def _handle(self, request: _Request) -> _Answer | None:
        """Returns the answer to send, or None to close the connection without one."""
        authorized = request.headers.get("authorization") == f"Bearer {self.secret_key}"
        key = request.headers.get("idempotency-key")
        with self._lock:
            self._requests.append(RecordedRequest(request.method, request.path, key, authorized))
            fault = self._faults.popleft() if self._faults else None
        if not authorized:
            return _Answer(401, _error("authentication_error", "invalid_api_key", "Bad API key."))
        if fault is not None and fault.kind == "status":
            return _Answer(fault.status, _error("api_error", "fake_fault", "Scripted failure."))
        if fault is not None and fault.kind == "hang_before":
            self._stopping.wait(self.hang_seconds)
            return None
        if self.delay_seconds:
            self._stopping.wait(self.delay_seconds)
        while not self._open.wait(0.05):
            if self._stopping.is_set():
                return None
        answer = self._route(request, key)
        if fault is not None and fault.kind == "hang_after":
            self._stopping.wait(self.hang_seconds)
        return answer

    def _route(self, request: _Request, key: str | None) -> _Answer:
        if request.method == "GET" and request.path == "/v1/charges":
            return self._lookup(request.query.get("idempotency_key", ""))
        if request.method == "POST" and request.path in ("/v1/charges", "/v1/refunds"):
            if not key:
                return _Answer(
                    400, _error("invalid_request_error", "idempotency_key_missing", "Send one.")
                )
            fingerprint = (request.method, request.path, tuple(sorted(request.form.items())))
            with self._lock:
                stored = self._state.responses.get(key)
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        return _Answer(
                            400,
                            _error("idempotency_error", "idempotency_key_reused", "Key reused."),
                        )
                    return _Answer(stored.status, stored.body, replayed=True)
                if request.path == "/v1/charges":
                    status, body = self._create_charge(request.form, key)
                else:
                    status, body = self._create_refund(request.form)
                self._state.responses[key] = _Stored(fingerprint, status, body)
            return _Answer(status, body)
        return _Answer(404, _error("invalid_request_error", "unknown_route", "No such route."))

    def _create_charge(self, form: Mapping[str, str], key: str) -> tuple[int, dict[str, Any]]:
        """Creates a charge from the form; the caller holds the lock."""
        try:
            amount = int(form["amount"])
            currency, source = form["currency"], form["source"]
        except (KeyError, ValueError):
            return 400, _error("invalid_request_error", "parameter_invalid", "Bad parameters.")
        if amount <= 0 or len(currency) != 3:
            return 400, _error("invalid_request_error", "parameter_invalid", "Bad parameters.")
        succeeded = source in SUCCEEDING_TOKENS
        decline_code = None if succeeded else DECLINE_CODES.get(source, "invalid_payment_method")
        charge_id = f"ch_{uuid.uuid4().hex}"
        charge: dict[str, Any] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_refunded": 0,
            "currency": currency,
            "description": form.get("description", ""),
            "status": "succeeded" if succeeded else "failed",
            "failure_code": decline_code,
            "idempotency_key": key,
        }
        self._state.charges[charge_id] = charge
        self._state.charge_by_key[key] = charge_id
        self._state.charges_created[key] += 1
        if succeeded:
            return 200, dict(charge)
        error = _error("card_error", "card_declined", "Your card was declined.")
        error["error"].update({"decline_code": decline_code, "charge": charge_id})
        return 402, error

    def _create_refund(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Refunds part of a charge; the caller holds the lock."""
        charge = self._state.charges.get(form.get("charge", ""))
        if charge is None:
            return 404, _error("invalid_request_error", "resource_missing", "No such charge.")
        try:
            amount = int(form["amount"])
        except (KeyError, ValueError):
            return 400, _error("invalid_request_error", "parameter_invalid", "Bad amount.")
        captured = charge["amount"] if charge["status"] == "succeeded" else 0
        if amount <= 0 or charge["amount_refunded"] + amount > captured:
            return 400, _error("invalid_request_error", "amount_too_large", "Refund too large.")
        charge["amount_refunded"] += amount
        refund = {
            "id": f"re_{uuid.uuid4().hex}",
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "status": "succeeded",
        }
        return 200, refund

    def _lookup(self, key: str) -> _Answer:
        with self._lock:
            self._state.lookups[key] += 1
            charge_id = self._state.charge_by_key.get(key)
            data = [] if charge_id is None else [dict(self._state.charges[charge_id])]
        return _Answer(200, {"object": "list", "data": data})


class _Server(ThreadingHTTPServer):
    # socketserver's backlog of 5 drops the SYNs of a burst of concurrent clients, which then
    # wait a second to retry: far beyond the tests' connect timeouts.
    request_queue_size = 128
    daemon_threads = True


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # names lower-cased
    form: dict[str, str]


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


def _error(error_type: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "code": code, "message": message}}


def _handler_for(provider: FakePaymentProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            request = _Request(
                method=self.command,
                path=url.path,
                query={k: v[0] for k, v in parse_qs(url.query).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                form=dict(parse_qsl(raw)),
            )
            answer = provider._handle(request)
            if answer is None:
                self.close_connection = True
                return
            payload = json.dumps(answer.body).encode()
            # The client may have timed out and gone; that is what some tests are about.
            with contextlib.suppress(OSError):
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if answer.replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Stays quiet: tests read `provider.requests` instead."""

    return Handler
