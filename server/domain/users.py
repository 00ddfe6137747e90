"""User accounts: registration, profile updates, roles and disabling."""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Sequence

import peewee

from server.db import database, utcnow
from server.domain import list_filter, listing
from server.domain import passwords as passwords_mod
from server.domain.passwords import PasswordHasher
from server.domain.principal import Principal, Role
from server.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from server.models import session as session_model
from server.models import user as user_model
from server.models.session import Session
from server.models.user import DISPLAY_NAME_MAX_LENGTH, EMAIL_MAX_LENGTH, User
from server.validation import Validator, has_control_characters, is_id, shown

USER_ROLES = (Role.CUSTOMER, Role.STAFF, Role.ADMIN)
UPDATABLE_PATHS = frozenset({"display_name"})
# Deliberately loose: the mailbox is the real test. Rejects spaces, missing parts and a dotless
# domain, which are always typos.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def normalize_email(raw: str) -> str:
    """Returns the canonical form of an email: NFKC, trimmed, lower-cased."""
    return unicodedata.normalize("NFKC", raw).strip().lower()


def validate_email(v: Validator, field: str, raw: str) -> str:
    """Checks and normalises an email field, recording violations in `v`."""
    email = normalize_email(raw)
    if not email:
        v.add(field, "is required")
    elif len(email) > EMAIL_MAX_LENGTH:
        v.add(field, f"must be at most {EMAIL_MAX_LENGTH} characters")
    elif not _EMAIL.match(email) or has_control_characters(email):
        v.add(field, "must be an email address like name@example.com")
    return email


def validate_password(v: Validator, field: str, password: str) -> None:
    """Checks a new password's length, recording violations in `v`."""
    if not passwords_mod.MIN_PASSWORD_LENGTH <= len(password) <= passwords_mod.MAX_PASSWORD_LENGTH:
        v.add(
            field,
            f"must be {passwords_mod.MIN_PASSWORD_LENGTH} to "
            f"{passwords_mod.MAX_PASSWORD_LENGTH} characters",
        )


def validate_display_name(v: Validator, field: str, raw: str) -> str:
    """Checks and trims a display name, recording violations in `v`."""
    return v.text(field, raw, DISPLAY_NAME_MAX_LENGTH, required=False)


USER_LIST = listing.ListSpec(
    name="users",
    model=User,
    filter_fields={
        "role": list_filter.FilterField(
            User.role,
            list_filter.FieldKind.ENUM,
            enum_values={f"ROLE_{role.value}": role.value for role in USER_ROLES},
        ),
        "disabled": list_filter.FilterField(User.disabled, list_filter.FieldKind.BOOL),
        "email": list_filter.FilterField(
            User.email, list_filter.FieldKind.STRING, operators=("=",)
        ),
        "create_time": list_filter.FilterField(User.create_time, list_filter.FieldKind.TIMESTAMP),
    },
    order_fields={"create_time": User.create_time, "email": User.email},
    default_order="create_time",
)


def list_(page: listing.PageRequest) -> listing.Page[User]:
    """Returns one page of users matching the filter, in the requested order."""
    return listing.list_page(USER_LIST, User.select(), page)


def etag(user: User) -> str:
    """Returns the user's opaque version tag."""
    return f'W/"{user.version}"'


def register(
    *,
    email: str,
    password: str,
    display_name: str,
    passwords: PasswordHasher,
    role: Role = Role.CUSTOMER,
) -> User:
    """Creates an account; raises AlreadyExists if the email is taken."""
    v = Validator()
    email = validate_email(v, "email", email)
    validate_password(v, "password", password)
    display_name = validate_display_name(v, "display_name", display_name)
    v.raise_if_any()
    if role not in USER_ROLES:
        raise ValueError(f"users cannot have role {role}")
    password_hash = passwords.hash(password)
    now = utcnow()
    try:
        with database.atomic():
            return User.create(
                id=str(uuid.uuid4()),
                email=email,
                display_name=display_name,
                role=role.value,
                password_hash=password_hash,
                create_time=now,
                update_time=now,
            )
    except peewee.IntegrityError:
        raise AlreadyExists(
            "An account with this email already exists.", reason="EMAIL_TAKEN"
        ) from None


def create_admin(*, email: str, passwords: PasswordHasher) -> tuple[User, str]:
    """Creates an administrator with a generated password; returns both."""
    password = secrets.token_urlsafe(18)
    user = register(
        email=email,
        password=password,
        display_name="Administrator",
        passwords=passwords,
        role=Role.ADMIN,
    )
    return user, password


def get_or_raise(user_id: str) -> User:
    """Returns the user with the given id; raises NotFound."""
    user = user_model.get(user_id) if is_id(user_id) else None
    if user is None:
        raise NotFound("The user does not exist.", reason="USER_NOT_FOUND")
    return user


def _check_user_id(user_id: str) -> None:
    v = Validator()
    v.check_id("user_id", user_id, "user")
    v.raise_if_any()


def update_current(
    *, principal: Principal, paths: Sequence[str], display_name: str, expected_etag: str
) -> User:
    """Updates the caller's profile fields named in `paths`; raises Aborted on a stale etag."""
    v = Validator()
    if not paths:
        v.add("update_mask", "must name at least one field")
    for path in paths:
        if path not in UPDATABLE_PATHS:
            v.add("update_mask", f"{shown(path)} cannot be updated; updatable: display_name")
    display_name = validate_display_name(v, "user.display_name", display_name)
    v.raise_if_any()
    with database.atomic():
        query = User.update(
            display_name=display_name, version=User.version + 1, update_time=utcnow()
        ).where(User.id == principal.subject)
        if expected_etag:
            user = get_or_raise(principal.subject)
            if etag(user) != expected_etag:
                raise Aborted(
                    "The user was changed since it was read; read it again.", reason="ETAG_MISMATCH"
                )
            query = query.where(User.version == user.version)
        if query.execute() == 0:
            raise Aborted(
                "The user was changed since it was read; read it again.", reason="ETAG_MISMATCH"
            )
    return get_or_raise(principal.subject)


def set_role(*, actor: Principal, user_id: str, role: Role | None) -> User:
    """Sets a user's role; administrators cannot change their own."""
    v = Validator()
    v.check_id("user_id", user_id, "user")
    v.check(role in USER_ROLES, "role", "must be ROLE_CUSTOMER, ROLE_STAFF or ROLE_ADMIN")
    v.raise_if_any()
    assert role is not None
    if user_id == actor.subject:
        raise FailedPrecondition(
            "Administrators cannot change their own role.", reason="SELF_MODIFICATION"
        )
    with database.atomic():
        # Setting the role a user already has is a successful no-op, not a new version.
        (
            User.update(role=role.value, version=User.version + 1, update_time=utcnow())
            .where((User.id == user_id) & (User.role != role.value))
            .execute()
        )
        return get_or_raise(user_id)


def enable(*, user_id: str) -> User:
    """Lets a disabled user sign in again (their ended sessions stay ended)."""
    _check_user_id(user_id)
    with database.atomic():
        user = get_or_raise(user_id)
        if user.disabled:
            (
                User.update(disabled=False, version=User.version + 1, update_time=utcnow())
                .where(User.id == user_id)
                .execute()
            )
        return get_or_raise(user_id)


def disable(*, actor: Principal, user_id: str) -> User:
    """Disables a user and ends all their sessions; administrators cannot disable themselves."""
    _check_user_id(user_id)
    if user_id == actor.subject:
        raise FailedPrecondition(
            "Administrators cannot disable themselves.", reason="SELF_MODIFICATION"
        )
    now = utcnow()
    with database.atomic():
        user = get_or_raise(user_id)
        if not user.disabled:
            (
                User.update(disabled=True, version=User.version + 1, update_time=now)
                .where(User.id == user_id)
                .execute()
            )
            session_model.revoke(Session.user == user_id, reason="USER_DISABLED", now=now)
        return get_or_raise(user_id)
