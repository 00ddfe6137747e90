"""Error mapping: the one place domain exceptions become gRPC statuses with rich details."""

from __future__ import annotations

import logging

import grpc
import peewee
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from playhouse.pool import MaxConnectionsExceeded

from server import call_context, errors
from server.interceptors.base import Call, ScopeInterceptor
from server.interceptors.request_log import REQUEST_ID_HEADER

ERROR_DOMAIN = "storefront"
log = logging.getLogger("storefront.errors")

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...],
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# Bounds on what one error may carry, so that no trailer grows near the 8 KiB at which gRPC
# clients start refusing a response (binary trailers travel base64-encoded, a third larger).
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 512
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 160
MAX_VIOLATIONS = 20
MAX_MESSAGE_VIOLATIONS = 5  # named in the status message; the BadRequest detail has them all
MAX_STATUS_BYTES = 4096


def cut(text: str, max_bytes: int) -> str:
    """Returns `text` cut to at most `max_bytes` of UTF-8 (ending with "…" when cut)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    ellipsis = "…"
    kept = encoded[: max_bytes - len(ellipsis.encode("utf-8"))]
    return kept.decode("utf-8", errors="ignore") + ellipsis


def _message(message: str, violations: list[errors.FieldViolation]) -> str:
    """The status message: the violations, briefly, when there are any (each description cut as
    in the BadRequest detail, at most MAX_MESSAGE_VIOLATIONS named); else the error's message."""
    if not violations:
        return message
    named = [
        errors.FieldViolation(
            cut(v.field, MAX_FIELD_BYTES), cut(v.description, MAX_DESCRIPTION_BYTES)
        )
        for v in violations[:MAX_MESSAGE_VIOLATIONS]
    ]
    summary = errors.violations_summary(named)
    left_out = len(violations) - len(named)
    return f"{summary}; and {left_out} more" if left_out > 0 else summary


def _violation_messages(
    violations: list[errors.FieldViolation], shown: int
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The first `shown` violations, cut to size, plus one line saying how many were left out."""
    messages = [
        error_details_pb2.BadRequest.FieldViolation(
            field=cut(v.field, MAX_FIELD_BYTES),
            description=cut(v.description, MAX_DESCRIPTION_BYTES),
        )
        for v in violations[:shown]
    ]
    left_out = len(violations) - shown
    if left_out > 0:
        messages.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="", description=f"and {left_out} more invalid fields not listed"
            )
        )
    return messages


# A delay beyond a day is surely a mistake; clamping keeps RetryInfo small and sane.
MAX_RETRY_DELAY_SECONDS = 86_400.0


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """Returns a RetryInfo for a delay of `seconds`, clamped to 0..MAX_RETRY_DELAY_SECONDS."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(min(max(seconds, 0.0), MAX_RETRY_DELAY_SECONDS) * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def build_status(code: grpc.StatusCode, error: errors.DomainError, request_id: str) -> _Status:
    """Returns the status for `error`: message, ErrorInfo, field violations, the request id and,
    for a ResourceExhausted with a known delay, a RetryInfo.

    Every part is bounded here, whatever the domain put in it: messages and values are cut, and
    at most MAX_VIOLATIONS violations are listed (fewer if the whole status would exceed
    MAX_STATUS_BYTES), followed by a count of the rest.
    """
    violations = error.violations if isinstance(error, errors.InvalidArgument) else []
    message = cut(_message(error.message, violations), MAX_MESSAGE_BYTES)
    head = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=ERROR_DOMAIN,
                metadata={
                    key: cut(value, MAX_METADATA_VALUE_BYTES)
                    for key, value in error.metadata.items()
                },
            )
        ),
        _pack(error_details_pb2.RequestInfo(request_id=request_id)),
    ]
    if isinstance(error, errors.ResourceExhausted) and error.retry_delay_seconds is not None:
        head.append(_pack(_retry_info(error.retry_delay_seconds)))
    shown = min(len(violations), MAX_VIOLATIONS)
    while True:
        details = list(head)
        if violations:
            details.append(
                _pack(
                    error_details_pb2.BadRequest(
                        field_violations=_violation_messages(violations, shown)
                    )
                )
            )
        status = status_pb2.Status(code=code.value[0], message=message, details=details)
        if shown <= 1 or status.ByteSize() <= MAX_STATUS_BYTES:
            break
        shown -= 1
    converted = rpc_status.to_status(status)
    return _Status(code, message, (*converted.trailing_metadata, (REQUEST_ID_HEADER, request_id)))


def _infrastructure_error(exc: BaseException) -> errors.DomainError | None:
    """Maps database failures that are not bugs: outages (retryable) and unstorable values."""
    if isinstance(exc, peewee.DataError):
        # A value validation let through that the database cannot store (a NUL byte in text on
        # PostgreSQL, an out-of-range number): the request's fault, not the server's.
        return errors.InvalidArgument(
            "A value in the request cannot be stored.", reason="UNSTORABLE_VALUE"
        )
    if isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
        return errors.Unavailable(
            "The database is unavailable; retry later.", reason="DATABASE_UNAVAILABLE"
        )
    if isinstance(exc, MaxConnectionsExceeded):
        return errors.Unavailable("The server is busy; retry later.", reason="POOL_EXHAUSTED")
    return None


def status_code(exc: errors.DomainError) -> grpc.StatusCode:
    """Returns the code of the nearest mapped class in the error's ancestry (PaymentDeclined is a
    FailedPrecondition)."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class ErrorInterceptor(ScopeInterceptor):
    """Turns DomainError into its status code and anything unexpected into a bare INTERNAL."""

    def exit(self, call: Call, error: BaseException | None) -> None:
        if not isinstance(error, Exception):
            return  # no error, or one that is not the call's (GeneratorExit, KeyboardInterrupt)
        context, method = call.context, call.method
        if isinstance(error, errors.DomainError):
            self._abort(context, status_code(error), error)
        if context.code() not in (None, grpc.StatusCode.OK):
            return  # grpc's own abort (e.g. from a handler calling context.abort)
        if not context.is_active():
            return  # the client cancelled; reading its stream failed, nobody is listening
        mapped = _infrastructure_error(error)
        request_id = _request_id()
        if mapped is not None:
            log.warning(
                "database refused the call",
                exc_info=error,
                extra={"request_id": request_id, "grpc.method": method.method},
            )
            self._abort(context, _CODES[type(mapped)], mapped)
        log.error(
            "unhandled exception",
            exc_info=error,
            extra={
                "request_id": request_id,
                "grpc.service": method.service,
                "grpc.method": method.method,
            },
        )
        self._abort(
            context,
            grpc.StatusCode.INTERNAL,
            errors.DomainError(
                f"Internal error. Quote request id {request_id} when reporting it.",
                reason="INTERNAL",
            ),
        )

    @staticmethod
    def _abort(
        context: grpc.ServicerContext, code: grpc.StatusCode, error: errors.DomainError
    ) -> None:
        call = call_context.current()
        if call is not None:
            call.error_reason = error.reason  # the access log line names it
        context.abort_with_status(build_status(code, error, call.request_id if call else "-"))


def _request_id() -> str:
    call = call_context.current()
    return call.request_id if call else "-"
