"""Per-call facts the interceptors establish and the servicers read: request id, principal and
client address."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from server.domain.principal import Principal
from server.errors import Unauthenticated


@dataclass
class CallContext:
    """What is known about the call in progress on this worker thread."""

    request_id: str
    principal: Principal | None = None
    # The caller's IP address (x-forwarded-for only from a trusted proxy); "" when unknown.
    client_address: str = ""
    # The ErrorInfo reason of the error the call ended with, for the access log; "" when none.
    error_reason: str = ""


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "storefront_call", default=None
)


def set_current(call: CallContext | None) -> contextvars.Token[CallContext | None]:
    """Makes `call` the current call; returns a token to restore the previous one."""
    return _current.set(call)


def reset(token: contextvars.Token[CallContext | None]) -> None:
    """Restores the call that was current before `set_current`."""
    _current.reset(token)


def current() -> CallContext | None:
    """Returns the call in progress on this thread, if any."""
    return _current.get()


def client_address() -> str:
    """Returns the calling client's address, "" outside a call or when it is unknown."""
    call = _current.get()
    return "" if call is None else call.client_address


def principal_or_none() -> Principal | None:
    """Returns the authenticated caller, or None for an anonymous call."""
    call = _current.get()
    return None if call is None else call.principal


def principal() -> Principal:
    """Returns the authenticated caller; raises Unauthenticated for an anonymous call."""
    call = _current.get()
    if call is None or call.principal is None:
        raise Unauthenticated("This call needs an access token.", reason="MISSING_TOKEN")
    return call.principal
