"""Writes for users and tokens."""

from __future__ import annotations

import hashlib
import re
import secrets

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from hubbub.accounts.models import ApiToken
from hubbub.errors import Conflict, Invalid, NotFound, Unauthorized

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TOKEN_PREFIX = "hb_"


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def user_create(*, username: str, password: str) -> User:
    if not USERNAME_RE.fullmatch(username):
        raise Invalid("username: 1-64 characters of letters, digits, '.', '_' or '-'")
    if username.lower().startswith("guest-"):
        raise Invalid("username: names starting with 'guest-' are kept for guests")
    try:
        validate_password(password)
    except ValidationError as exc:
        raise Invalid("password: " + " ".join(exc.messages)) from None
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict(f"user {username!r} exists")
    try:
        with transaction.atomic():
            return User.objects.create_user(username=username, password=password)
    except IntegrityError:
        raise Conflict(f"user {username!r} exists") from None


def user_get(*, username: str) -> User:
    try:
        return User.objects.get(username=username)
    except User.DoesNotExist:
        raise NotFound(f"no user {username!r}") from None


def token_create(*, user: User) -> str:
    """A new bearer token for ``user``. Only its digest is stored: this is the one chance to see it."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ApiToken.objects.create(user=user, digest=_digest(raw))
    return raw


def token_authenticate(*, raw: str) -> User:
    """The active user a token belongs to. Raises Unauthorized for an unknown token."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        raise Unauthorized("invalid token")
    token = ApiToken.objects.select_related("user").filter(digest=_digest(raw)).first()
    if token is None or not token.user.is_active:
        raise Unauthorized("invalid token")
    now = timezone.now()
    # Write at most once a minute per token: bearer auth is on every API call.
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def gone(*, session_keys: set[str], user_keys: set[str]) -> tuple[set[str], set[str]]:
    """Of these sessions and ``u:<id>`` actor keys: the sessions that no longer exist and the
    users that were deleted or deactivated (two queries whatever the numbers)."""
    from django.contrib.sessions.models import Session

    alive = set(
        Session.objects.filter(session_key__in=session_keys, expire_date__gt=timezone.now())
        .values_list("session_key", flat=True)
    ) if session_keys else set()
    ids = {int(key[2:]) for key in user_keys if key[2:].isdigit()}
    active = set(
        User.objects.filter(pk__in=ids, is_active=True).values_list("pk", flat=True)
    ) if ids else set()
    return session_keys - alive, {f"u:{pk}" for pk in ids - active}
