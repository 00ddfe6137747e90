"""IdentityService through the client SDK: every flow and every status code its comments promise."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import RetryInfo
from storefront.v1 import access_pb2
from storefront.v1 import identity_service_pb2 as pb
from storefront.v1 import identity_service_pb2_grpc as identity_grpc
from storefront_client import StorefrontClient, error_info

from server.domain.principal import Role
from tests.e2e.conftest import PASSWORD, Running, rpc_error, violated_fields

StatusCode = grpc.StatusCode


# --- RegisterUser -----------------------------------------------------------------------------


def test_register_normalises_the_email_and_creates_a_customer(running: Running) -> None:
    user = running.client().register("  Ada@Example.COM ", PASSWORD, "Ada")
    assert user.email == "ada@example.com"
    assert user.role == access_pb2.ROLE_CUSTOMER
    assert not user.email_verified and not user.disabled
    assert user.id and user.etag and user.create_time.seconds > 0


@pytest.mark.parametrize(
    ("email", "password", "display_name", "fields"),
    [
        ("not-an-email", PASSWORD, "", {"email"}),
        ("", PASSWORD, "", {"email"}),
        ("a@b.c", "short", "", {"password"}),
        ("a@b.c", "x" * 129, "", {"password"}),
        ("a@b.c", PASSWORD, "n" * 101, {"display_name"}),
        ("a" * 250 + "@example.com", PASSWORD, "", {"email"}),
        ("bad email@x.com", "short", "ok\x07", {"email", "password", "display_name"}),
    ],
)
def test_register_rejects_invalid_fields(
    running: Running, email: str, password: str, display_name: str, fields: set[str]
) -> None:
    err = rpc_error(lambda: running.client().register(email, password, display_name))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields
    assert error_info(err)[0] == "FIELD_INVALID"


def test_register_twice_with_the_same_email_is_already_exists(running: Running) -> None:
    client = running.client()
    client.register("dup@example.com", PASSWORD)
    err = rpc_error(lambda: client.register("DUP@example.com ", PASSWORD))
    assert err.code() == StatusCode.ALREADY_EXISTS
    assert error_info(err)[0] == "EMAIL_TAKEN"


def test_concurrent_registrations_of_one_email_create_exactly_one_account(running: Running) -> None:
    outcomes: list[grpc.StatusCode] = []
    barrier = threading.Barrier(6)

    def register() -> None:
        client = running.client()
        barrier.wait()
        try:
            client.register("race@example.com", PASSWORD)
            outcomes.append(StatusCode.OK)
        except grpc.RpcError as err:
            outcomes.append(err.code())

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == sorted(
        [StatusCode.OK] + [StatusCode.ALREADY_EXISTS] * 5, key=str
    )


# --- Login, throttling ------------------------------------------------------------------------


def test_login_returns_a_session_whose_token_verifies_with_the_published_keys(
    running: Running,
) -> None:
    email = running.create_user(Role.STAFF)
    client = running.client()
    user = client.login(email.upper(), PASSWORD)
    assert user.email == email and user.role == access_pb2.ROLE_STAFF
    assert client.session is not None
    keys = client.identity.ListSigningKeys(pb.ListSigningKeysRequest())
    token = client.session.access_token
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in keys.keys if k.kid == header["kid"])
    public_key = jwt.PyJWK({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "alg": jwk.alg}).key
    claims = jwt.decode(
        token, public_key, algorithms=["EdDSA"], audience=keys.audience, issuer=keys.issuer
    )
    assert claims["sub"] == user.id and claims["role"] == "STAFF"
    assert claims["exp"] - claims["iat"] <= 900
    assert {"jti", "sid"} <= set(claims)


def test_unknown_email_wrong_password_and_disabled_user_get_identical_answers(
    running: Running,
) -> None:
    email = running.create_user()
    disabled = running.create_user()
    admin = running.login(Role.ADMIN)
    disabled_id = running.client()
    disabled_id.login(disabled, PASSWORD)
    assert disabled_id.session is not None
    me = disabled_id.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
    admin.identity.DisableUser(pb.DisableUserRequest(user_id=me.id))

    answers = []
    for login_email, password in [
        ("nobody@example.com", PASSWORD),
        (email, "wrong password!"),
        (disabled, PASSWORD),
    ]:
        err = rpc_error(lambda e=login_email, p=password: running.client().login(e, p))
        answers.append((err.code(), err.details(), error_info(err)))
    assert answers[0][0] == StatusCode.UNAUTHENTICATED
    assert answers[0] == answers[1] == answers[2]


def test_five_failed_logins_throttle_the_account_even_for_the_right_password(
    running: Running,
) -> None:
    email = running.create_user()
    client = running.client()
    for _ in range(5):
        assert (
            rpc_error(lambda: client.login(email, "wrong password!")).code()
            == StatusCode.UNAUTHENTICATED
        )
    err = rpc_error(lambda: client.login(email, PASSWORD))
    assert err.code() == StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err)[0] == "LOGIN_THROTTLED"
    # Another account is not affected.
    client.login(running.create_user(), PASSWORD)


def login_via(running: Running, forwarded_for: str, email: str, password: str) -> grpc.StatusCode:
    """Signs in with an x-forwarded-for header; returns the status code."""
    with running.channel() as channel:
        stub = identity_grpc.IdentityServiceStub(channel)
        try:
            stub.Login(
                pb.LoginRequest(email=email, password=password),
                metadata=(("x-forwarded-for", forwarded_for),),
            )
        except grpc.RpcError as err:
            return err.code()
    return StatusCode.OK


def test_failed_logins_from_one_address_do_not_lock_the_owner_out_from_another(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(trusted_proxies=("127.0.0.1",))
    email = running.create_user()
    for _ in range(5):
        assert login_via(running, "203.0.113.1", email, "wrong password!") == (
            StatusCode.UNAUTHENTICATED
        )
    assert login_via(running, "203.0.113.1", email, PASSWORD) == StatusCode.RESOURCE_EXHAUSTED
    assert login_via(running, "198.51.100.2", email, PASSWORD) == StatusCode.OK


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    server_factory: Callable[..., Running],
) -> None:
    running = server_factory(trusted_proxies=("10.0.0.0/8",))
    email = running.create_user()
    for _ in range(5):
        login_via(running, "203.0.113.1", email, "wrong password!")
    # Both calls come from 127.0.0.1, which no setting trusts: one address, one throttle.
    assert login_via(running, "198.51.100.2", email, PASSWORD) == StatusCode.RESOURCE_EXHAUSTED


def test_a_throttled_login_says_when_to_retry(running: Running) -> None:
    email = running.create_user()
    client = running.client()
    for _ in range(5):
        rpc_error(lambda: client.login(email, "wrong password!"))
    err = rpc_error(lambda: client.login(email, PASSWORD))
    [raw] = [v for k, v in err.trailing_metadata() or () if k == "grpc-status-details-bin"]
    [retry] = [d for d in status_pb2.Status.FromString(raw).details if d.Is(RetryInfo.DESCRIPTOR)]
    info = RetryInfo()
    retry.Unpack(info)
    assert 0 < info.retry_delay.seconds <= 900


def test_an_admin_clears_an_emails_sign_in_throttle(running: Running) -> None:
    email = running.create_user()
    client = running.client()
    for _ in range(5):
        rpc_error(lambda: client.login(email, "wrong password!"))
    assert rpc_error(lambda: client.login(email, PASSWORD)).code() == StatusCode.RESOURCE_EXHAUSTED
    admin = running.login(Role.ADMIN)
    cleared = admin.identity.ClearSignInThrottle(pb.ClearSignInThrottleRequest(email=email.upper()))
    assert cleared.cleared_failure_count == 5
    client.login(email, PASSWORD)
    again = admin.identity.ClearSignInThrottle(pb.ClearSignInThrottleRequest(email=email))
    assert again.cleared_failure_count == 0


@pytest.mark.parametrize(
    ("email", "role", "code"),
    [
        ("", Role.ADMIN, StatusCode.INVALID_ARGUMENT),
        ("a" * 250 + "@example.com", Role.ADMIN, StatusCode.INVALID_ARGUMENT),
        ("bell\x07@example.com", Role.ADMIN, StatusCode.INVALID_ARGUMENT),
        ("someone@example.com", Role.STAFF, StatusCode.PERMISSION_DENIED),
        ("someone@example.com", Role.CUSTOMER, StatusCode.PERMISSION_DENIED),
    ],
)
def test_clear_sign_in_throttle_refusals(
    running: Running, email: str, role: Role, code: grpc.StatusCode
) -> None:
    caller = running.login(role)
    err = rpc_error(
        lambda: caller.identity.ClearSignInThrottle(pb.ClearSignInThrottleRequest(email=email))
    )
    assert err.code() == code
    if code == StatusCode.INVALID_ARGUMENT:
        assert violated_fields(err) == {"email"}


def test_clear_sign_in_throttle_needs_a_token(running: Running) -> None:
    err = rpc_error(
        lambda: running.client().identity.ClearSignInThrottle(
            pb.ClearSignInThrottleRequest(email="someone@example.com")
        )
    )
    assert err.code() == StatusCode.UNAUTHENTICATED


def test_login_with_empty_fields_is_invalid_argument(running: Running) -> None:
    err = rpc_error(lambda: running.client().login("", ""))
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"email", "password"}


# --- Sessions: refresh, reuse, logout ---------------------------------------------------------


def _login_raw(running: Running, email: str) -> pb.LoginResponse:
    stub = running.client().identity
    return stub.Login(pb.LoginRequest(email=email, password=PASSWORD))


def _current_user(running: Running, access_token: str) -> pb.User:
    stub = running.client().identity
    return stub.GetCurrentUser(
        pb.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {access_token}"),)
    ).user


def test_refresh_rotates_the_refresh_token(running: Running) -> None:
    first = _login_raw(running, running.create_user())
    stub = running.client().identity
    second = stub.RefreshSession(
        pb.RefreshSessionRequest(refresh_token=first.session.refresh_token)
    ).session
    assert second.refresh_token != first.session.refresh_token
    assert second.access_token != first.session.access_token
    assert _current_user(running, second.access_token).id == first.user.id


def test_reusing_a_refresh_token_revokes_the_whole_session(running: Running) -> None:
    first = _login_raw(running, running.create_user())
    stub = running.client().identity
    second = stub.RefreshSession(
        pb.RefreshSessionRequest(refresh_token=first.session.refresh_token)
    ).session

    reuse = rpc_error(
        lambda: stub.RefreshSession(
            pb.RefreshSessionRequest(refresh_token=first.session.refresh_token)
        )
    )
    assert reuse.code() == StatusCode.UNAUTHENTICATED
    # The legitimate holder's newer tokens are dead too: the family is revoked.
    assert (
        rpc_error(
            lambda: stub.RefreshSession(
                pb.RefreshSessionRequest(refresh_token=second.refresh_token)
            )
        ).code()
        == StatusCode.UNAUTHENTICATED
    )
    assert (
        rpc_error(lambda: _current_user(running, second.access_token)).code()
        == StatusCode.UNAUTHENTICATED
    )


def test_refresh_with_an_unknown_or_empty_token(running: Running) -> None:
    stub = running.client().identity
    assert (
        rpc_error(
            lambda: stub.RefreshSession(pb.RefreshSessionRequest(refresh_token="made-up"))
        ).code()
        == StatusCode.UNAUTHENTICATED
    )
    assert (
        rpc_error(lambda: stub.RefreshSession(pb.RefreshSessionRequest())).code()
        == StatusCode.INVALID_ARGUMENT
    )


def test_logout_ends_the_session_at_once(running: Running) -> None:
    email = running.create_user()
    login = _login_raw(running, email)
    other = _login_raw(running, email)
    stub = running.client().identity
    ended = stub.Logout(
        pb.LogoutRequest(), metadata=(("authorization", f"Bearer {login.session.access_token}"),)
    )
    assert ended.ended_session_count == 1
    # Access tokens are checked against their session on every call: refused from now on.
    assert (
        rpc_error(lambda: _current_user(running, login.session.access_token)).code()
        == StatusCode.UNAUTHENTICATED
    )
    assert (
        rpc_error(
            lambda: stub.RefreshSession(
                pb.RefreshSessionRequest(refresh_token=login.session.refresh_token)
            )
        ).code()
        == StatusCode.UNAUTHENTICATED
    )
    # The user's other session is untouched.
    assert _current_user(running, other.session.access_token).email == email


def test_logout_of_all_sessions(running: Running) -> None:
    email = running.create_user()
    sessions = [_login_raw(running, email) for _ in range(3)]
    stub = running.client().identity
    ended = stub.Logout(
        pb.LogoutRequest(all_sessions=True),
        metadata=(("authorization", f"Bearer {sessions[0].session.access_token}"),),
    )
    assert ended.ended_session_count == 3
    for login in sessions:
        assert (
            rpc_error(lambda t=login.session.access_token: _current_user(running, t)).code()
            == StatusCode.UNAUTHENTICATED
        )


# --- Profile ----------------------------------------------------------------------------------


def test_update_current_user_changes_only_the_masked_field(running: Running) -> None:
    client = running.login()
    me = client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
    updated = client.identity.UpdateCurrentUser(
        pb.UpdateCurrentUserRequest(
            user=pb.User(display_name="  New Name ", role=access_pb2.ROLE_ADMIN, email="x@y.z"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            etag=me.etag,
        )
    ).user
    assert updated.display_name == "New Name"
    assert updated.role == access_pb2.ROLE_CUSTOMER and updated.email == me.email
    assert updated.etag != me.etag


@pytest.mark.parametrize(
    "paths", [[], ["role"], ["email"], ["id"], ["email_verified"], ["display_name", "disabled"]]
)
def test_update_current_user_refuses_other_paths(running: Running, paths: list[str]) -> None:
    client = running.login()
    err = rpc_error(
        lambda: client.identity.UpdateCurrentUser(
            pb.UpdateCurrentUserRequest(
                user=pb.User(display_name="x", role=access_pb2.ROLE_ADMIN),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert "update_mask" in violated_fields(err)
    me = client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
    assert me.role == access_pb2.ROLE_CUSTOMER and me.display_name == "Customer"


def test_update_current_user_with_a_stale_etag_is_aborted(running: Running) -> None:
    client = running.login()
    me = client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user
    mask = field_mask_pb2.FieldMask(paths=["display_name"])
    client.identity.UpdateCurrentUser(
        pb.UpdateCurrentUserRequest(
            user=pb.User(display_name="first"), update_mask=mask, etag=me.etag
        )
    )
    err = rpc_error(
        lambda: client.identity.UpdateCurrentUser(
            pb.UpdateCurrentUserRequest(
                user=pb.User(display_name="second"), update_mask=mask, etag=me.etag
            )
        )
    )
    assert err.code() == StatusCode.ABORTED
    assert client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.display_name == "first"


def test_update_current_user_rejects_an_over_long_name(running: Running) -> None:
    client = running.login()
    err = rpc_error(
        lambda: client.identity.UpdateCurrentUser(
            pb.UpdateCurrentUserRequest(
                user=pb.User(display_name="n" * 101),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"user.display_name"}


# --- Password change --------------------------------------------------------------------------


def test_change_password_revokes_every_session_and_starts_a_new_one(running: Running) -> None:
    email = running.create_user()
    other = _login_raw(running, email)
    client = running.client()
    client.login(email, PASSWORD)
    new_session = client.identity.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password="a whole new passphrase")
    ).session
    assert (
        rpc_error(lambda: _current_user(running, other.session.access_token)).code()
        == StatusCode.UNAUTHENTICATED
    )
    assert _current_user(running, new_session.access_token).email == email
    assert (
        rpc_error(lambda: running.client().login(email, PASSWORD)).code()
        == StatusCode.UNAUTHENTICATED
    )
    running.client().login(email, "a whole new passphrase")


@pytest.mark.parametrize(
    ("current", "new", "fields"),
    [
        ("wrong password!", "a whole new passphrase", {"current_password"}),
        (PASSWORD, "short", {"new_password"}),
        (PASSWORD, PASSWORD, {"new_password"}),
        ("", "a whole new passphrase", {"current_password"}),
    ],
)
def test_change_password_rejects(
    running: Running, current: str, new: str, fields: set[str]
) -> None:
    client = running.login()
    err = rpc_error(
        lambda: client.identity.ChangePassword(
            pb.ChangePasswordRequest(current_password=current, new_password=new)
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == fields
    client.identity.GetCurrentUser(pb.GetCurrentUserRequest())  # the session still works


# --- Administration ---------------------------------------------------------------------------


def _user_id(running: Running, client: StorefrontClient) -> str:
    return str(client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.id)


def test_role_changes_apply_to_live_tokens_at_once(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    customer = running.login(Role.CUSTOMER)
    customer_id = _user_id(running, customer)
    assert (
        rpc_error(lambda: customer.identity.ListUsers(pb.ListUsersRequest())).code()
        == StatusCode.PERMISSION_DENIED
    )
    promoted = admin.identity.UpdateUserRole(
        pb.UpdateUserRoleRequest(user_id=customer_id, role=access_pb2.ROLE_ADMIN)
    ).user
    assert promoted.role == access_pb2.ROLE_ADMIN
    customer.identity.ListUsers(pb.ListUsersRequest())  # same token, new role


@pytest.mark.parametrize(
    ("role", "code"),
    [
        (access_pb2.ROLE_UNSPECIFIED, StatusCode.INVALID_ARGUMENT),
        (access_pb2.ROLE_SERVICE, StatusCode.INVALID_ARGUMENT),
    ],
)
def test_update_user_role_rejects_non_user_roles(
    running: Running, role: access_pb2.Role.ValueType, code: grpc.StatusCode
) -> None:
    admin = running.login(Role.ADMIN)
    target = _user_id(running, running.login())
    err = rpc_error(
        lambda: admin.identity.UpdateUserRole(pb.UpdateUserRoleRequest(user_id=target, role=role))
    )
    assert err.code() == code
    assert violated_fields(err) == {"role"}


def test_admin_user_management_not_found_and_self_modification(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    admin_id = _user_id(running, admin)
    missing = "00000000-0000-4000-8000-000000000000"
    for call in (
        lambda: admin.identity.UpdateUserRole(
            pb.UpdateUserRoleRequest(user_id=missing, role=access_pb2.ROLE_STAFF)
        ),
        lambda: admin.identity.DisableUser(pb.DisableUserRequest(user_id=missing)),
    ):
        assert rpc_error(call).code() == StatusCode.NOT_FOUND
    assert (
        rpc_error(
            lambda: admin.identity.DisableUser(pb.DisableUserRequest(user_id="not-a-uuid"))
        ).code()
        == StatusCode.INVALID_ARGUMENT
    )
    for call in (
        lambda: admin.identity.UpdateUserRole(
            pb.UpdateUserRoleRequest(user_id=admin_id, role=access_pb2.ROLE_CUSTOMER)
        ),
        lambda: admin.identity.DisableUser(pb.DisableUserRequest(user_id=admin_id)),
    ):
        err = rpc_error(call)
        assert err.code() == StatusCode.FAILED_PRECONDITION
        assert error_info(err)[0] == "SELF_MODIFICATION"


def test_disabling_a_user_kills_their_live_tokens_and_refresh_tokens(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    email = running.create_user()
    login = _login_raw(running, email)
    disabled = admin.identity.DisableUser(pb.DisableUserRequest(user_id=login.user.id)).user
    assert disabled.disabled
    assert (
        rpc_error(lambda: _current_user(running, login.session.access_token)).code()
        == StatusCode.UNAUTHENTICATED
    )
    assert (
        rpc_error(
            lambda: running.client().identity.RefreshSession(
                pb.RefreshSessionRequest(refresh_token=login.session.refresh_token)
            )
        ).code()
        == StatusCode.UNAUTHENTICATED
    )
    # Disabling again changes nothing and succeeds.
    again = admin.identity.DisableUser(pb.DisableUserRequest(user_id=login.user.id)).user
    assert again.etag == disabled.etag


# --- Service accounts -------------------------------------------------------------------------


def test_service_account_credentials_give_a_service_token(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    created = admin.identity.CreateServiceAccount(
        pb.CreateServiceAccountRequest(display_name="order-exporter")
    )
    assert created.client_secret and created.service_account.client_id
    service = running.client()
    service.use_service_credentials(created.service_account.client_id, created.client_secret)
    assert service.session is not None
    claims = jwt.decode(service.session.access_token, options={"verify_signature": False})
    assert claims["role"] == "SERVICE" and claims["sub"] == created.service_account.id
    assert not service.session.refresh_token
    # A service is not a user: user-only RPCs are refused.
    assert (
        rpc_error(lambda: service.identity.GetCurrentUser(pb.GetCurrentUserRequest())).code()
        == StatusCode.PERMISSION_DENIED
    )


def test_service_token_with_wrong_or_unknown_credentials(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    created = admin.identity.CreateServiceAccount(
        pb.CreateServiceAccountRequest(display_name="svc")
    )
    stub = running.client().identity
    wrong = rpc_error(
        lambda: stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(
                client_id=created.service_account.client_id, client_secret="nope"
            )
        )
    )
    unknown = rpc_error(
        lambda: stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(client_id="sa-unknown", client_secret=created.client_secret)
        )
    )
    assert wrong.code() == unknown.code() == StatusCode.UNAUTHENTICATED
    assert wrong.details() == unknown.details()
    assert (
        rpc_error(lambda: stub.IssueServiceToken(pb.IssueServiceTokenRequest())).code()
        == StatusCode.INVALID_ARGUMENT
    )


def test_create_service_account_requires_a_name(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    for name in ("", "   ", "x" * 101):
        err = rpc_error(
            lambda n=name: admin.identity.CreateServiceAccount(
                pb.CreateServiceAccountRequest(display_name=n)
            )
        )
        assert err.code() == StatusCode.INVALID_ARGUMENT
        assert violated_fields(err) == {"display_name"}


# --- ListUsers --------------------------------------------------------------------------------


def test_list_users_walks_every_page_once_in_order(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    for role in [Role.CUSTOMER] * 5 + [Role.STAFF] * 2:
        running.create_user(role)
    seen: list[pb.User] = []
    token = ""
    while True:
        page = admin.identity.ListUsers(
            pb.ListUsersRequest(page_size=3, page_token=token, order_by="email desc")
        )
        assert len(page.users) <= 3
        seen.extend(page.users)
        token = page.next_page_token
        if not token:
            break
    emails = [u.email for u in seen]
    assert len(emails) == 8 == len(set(emails))
    assert emails == sorted(emails, reverse=True)


def test_list_users_filters(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    staff = {running.create_user(Role.STAFF) for _ in range(2)}
    running.create_user(Role.CUSTOMER)
    page = admin.identity.ListUsers(pb.ListUsersRequest(filter="role = ROLE_STAFF"))
    assert {u.email for u in page.users} == staff
    assert not page.next_page_token
    page = admin.identity.ListUsers(
        pb.ListUsersRequest(filter=f'email = "{sorted(staff)[0]}" AND disabled = false')
    )
    assert [u.email for u in page.users] == [sorted(staff)[0]]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"filter": 'password = "x"'}, "filter"),
        ({"filter": "role = ROLE_STAFF; DROP TABLE users"}, "filter"),
        ({"filter": "email = 'x' OR '1'='1'"}, "filter"),
        ({"order_by": "password"}, "order_by"),
        ({"page_token": "garbage"}, "page_token"),
    ],
)
def test_list_users_rejects_bad_paging_filter_and_order(
    running: Running, request_fields: dict[str, object], field: str
) -> None:
    admin = running.login(Role.ADMIN)
    err = rpc_error(lambda: admin.identity.ListUsers(pb.ListUsersRequest(**request_fields)))  # type: ignore[arg-type]
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(err)


def test_list_users_page_token_is_bound_to_its_query(running: Running) -> None:
    admin = running.login(Role.ADMIN)
    for _ in range(3):
        running.create_user()
    first = admin.identity.ListUsers(pb.ListUsersRequest(page_size=1, order_by="email"))
    assert first.next_page_token
    err = rpc_error(
        lambda: admin.identity.ListUsers(
            pb.ListUsersRequest(
                page_size=1, order_by="create_time", page_token=first.next_page_token
            )
        )
    )
    assert err.code() == StatusCode.INVALID_ARGUMENT
    assert violated_fields(err) == {"page_token"}


def test_nul_bytes_are_invalid_argument_on_every_engine(running: Running) -> None:
    """PostgreSQL cannot store or compare text with NUL: such input is refused up front."""
    stub = running.client().identity
    admin = running.login(Role.ADMIN)
    for call in (
        lambda: stub.Login(pb.LoginRequest(email="a\x00@example.com", password=PASSWORD)),
        lambda: stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(client_id="sa-\x00", client_secret="x")
        ),
        lambda: admin.identity.ListUsers(pb.ListUsersRequest(filter='email = "a\x00"')),
    ):
        assert rpc_error(call).code() == StatusCode.INVALID_ARGUMENT
