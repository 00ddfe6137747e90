"""Account recovery, e-mail verification and EnableUser on a real server, both engines.

The e-mails go through the dispatcher to `make run`'s file transport (`<data dir>/mail/*.eml`),
where the tests read the token as a customer would.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
import uuid
from pathlib import Path

import grpc
import pytest
from storefront.v1 import identity_service_pb2 as pb
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from server.models.account_token import AccountToken
from server.models.email_message import EmailMessage
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields, wait_for

StatusCode = grpc.StatusCode
NEW_PASSWORD = "a brand new passphrase"
TOKEN = re.compile(r"^  ([A-Za-z0-9_-]{43})$", re.MULTILINE)


def mails_to(data_dir: Path, recipient: str, subject: str) -> list[str]:
    """The text parts of the e-mails written for `recipient` with `subject`."""
    found = []
    for path in sorted((data_dir / "mail").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == recipient and message["Subject"] == subject:
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            found.append(body.get_content())
    return found


def token_mailed(data_dir: Path, recipient: str, subject: str, count: int = 1) -> str:
    """The token of the `count`th e-mail to `recipient`, once the dispatcher has written it."""
    assert wait_for(lambda: len(mails_to(data_dir, recipient, subject)) >= count, 20)
    match = TOKEN.search(mails_to(data_dir, recipient, subject)[count - 1])
    assert match is not None
    return match.group(1)


RESET = "Reset your storefront password"
VERIFY = "Confirm your e-mail address"


@pytest.fixture
def data_dir(e2e_database_url: tuple[Path, str]) -> Path:
    return e2e_database_url[0]


def test_a_reset_token_sets_the_password_once_and_ends_every_session(
    running: Running, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = running.create_user(Role.CUSTOMER)
    signed_in = running.client()
    signed_in.login(address, PASSWORD)
    public = running.client()

    with caplog.at_level(logging.DEBUG):
        public.identity.RequestPasswordReset(pb.RequestPasswordResetRequest(email=address))
        token = token_mailed(data_dir, address, RESET)
        public.identity.ResetPassword(
            pb.ResetPasswordRequest(token=token, new_password=NEW_PASSWORD)
        )
        again = rpc_error(
            lambda: public.identity.ResetPassword(
                pb.ResetPasswordRequest(token=token, new_password="yet another passphrase")
            )
        )

    assert (again.code(), error_info(again)[0]) == (StatusCode.INVALID_ARGUMENT, "TOKEN_INVALID")
    assert token not in (again.details() or "")
    ended = rpc_error(lambda: signed_in.identity.GetCurrentUser(pb.GetCurrentUserRequest()))
    assert ended.code() == StatusCode.UNAUTHENTICATED
    assert rpc_error(lambda: running.client().login(address, PASSWORD)).code() == (
        StatusCode.UNAUTHENTICATED
    )
    running.client().login(address, NEW_PASSWORD)
    # The token is nowhere but in the e-mail: not in a log line, not in the database.
    assert all(token not in record.getMessage() for record in caplog.records)
    assert all(token not in str(record.__dict__) for record in caplog.records)
    with running.db.connection_context():
        assert AccountToken.select().where(AccountToken.token_hash == token).count() == 0
        assert all(
            token not in row.text_body and token not in row.html_body
            for row in EmailMessage.select()
        )


def test_an_unknown_address_gets_the_same_answer_and_no_mail(
    running: Running, data_dir: Path
) -> None:
    public = running.client()
    stranger = "nobody-here@example.com"
    answer = public.identity.RequestPasswordReset(pb.RequestPasswordResetRequest(email=stranger))
    known = running.create_user(Role.CUSTOMER)
    same = public.identity.RequestPasswordReset(pb.RequestPasswordResetRequest(email=known))
    assert answer == same == pb.RequestPasswordResetResponse()
    token_mailed(data_dir, known, RESET)
    time.sleep(1.5)  # a dispatcher pass later, still nothing for the stranger
    assert mails_to(data_dir, stranger, RESET) == []
    bad = rpc_error(
        lambda: public.identity.RequestPasswordReset(pb.RequestPasswordResetRequest(email="x"))
    )
    assert violated_fields(bad) == {"email"}


def test_at_most_three_reset_mails_an_hour_and_an_expired_token_is_refused(
    running: Running, data_dir: Path
) -> None:
    address = running.create_user(Role.CUSTOMER)
    public = running.client()
    for _ in range(5):
        public.identity.RequestPasswordReset(pb.RequestPasswordResetRequest(email=address))
    with running.db.connection_context():
        assert AccountToken.select().count() == 3
    token = token_mailed(data_dir, address, RESET, count=3)
    with running.db.connection_context():
        AccountToken.update(expire_time=AccountToken.create_time).execute()
    expired = rpc_error(
        lambda: public.identity.ResetPassword(
            pb.ResetPasswordRequest(token=token, new_password=NEW_PASSWORD)
        )
    )
    assert error_info(expired)[0] == "TOKEN_INVALID"
    running.client().login(address, PASSWORD)  # unchanged


def test_a_verification_token_marks_the_address_verified(running: Running, data_dir: Path) -> None:
    address = running.create_user(Role.CUSTOMER)
    customer = running.client()
    customer.login(address, PASSWORD)
    customer.identity.SendVerificationEmail(pb.SendVerificationEmailRequest())
    token = token_mailed(data_dir, address, VERIFY)
    wrong_kind = rpc_error(
        lambda: customer.identity.ResetPassword(
            pb.ResetPasswordRequest(token=token, new_password=NEW_PASSWORD)
        )
    )
    assert error_info(wrong_kind)[0] == "TOKEN_INVALID"  # a verification token resets nothing

    verified = running.client().identity.VerifyEmail(pb.VerifyEmailRequest(token=token)).user
    assert verified.email_verified
    assert customer.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.email_verified
    done = rpc_error(
        lambda: customer.identity.SendVerificationEmail(pb.SendVerificationEmailRequest())
    )
    assert (done.code(), error_info(done)[0]) == (
        StatusCode.FAILED_PRECONDITION,
        "EMAIL_ALREADY_VERIFIED",
    )


def test_enable_user_undoes_disable_user(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    address = running.create_user(Role.CUSTOMER)
    user = running.client().login(address, PASSWORD)
    admin.identity.DisableUser(pb.DisableUserRequest(user_id=user.id))
    assert rpc_error(lambda: running.client().login(address, PASSWORD)).code() == (
        StatusCode.UNAUTHENTICATED
    )
    enabled = admin.identity.EnableUser(pb.EnableUserRequest(user_id=user.id)).user
    assert not enabled.disabled
    running.client().login(address, PASSWORD)
    customer: StorefrontClient = running.login(Role.CUSTOMER)
    denied = rpc_error(lambda: customer.identity.EnableUser(pb.EnableUserRequest(user_id=user.id)))
    assert denied.code() == StatusCode.PERMISSION_DENIED
    unknown = rpc_error(
        lambda: admin.identity.EnableUser(pb.EnableUserRequest(user_id=str(uuid.uuid4())))
    )
    assert unknown.code() == StatusCode.NOT_FOUND
