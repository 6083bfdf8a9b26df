"""Who is acting: a signed-in user or a guest. Services take an :class:`Actor`, never a request."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


@dataclass(frozen=True, slots=True)
class Actor:
    key: str  # "u:<user id>" or "g:<guest key>"; stable identity for idempotency and presence
    name: str  # display name
    user_id: int | None
    service: bool = False  # a trusted program posting through hubbub.publish (no socket, no login)

    @property
    def is_guest(self) -> bool:
        return self.user_id is None and not self.service


def actor_for_user(user: AbstractBaseUser) -> Actor:
    return Actor(key=f"u:{user.pk}", name=user.get_username(), user_id=int(user.pk))


def actor_for_service(name: str) -> Actor:
    """A program that shares Hubbub's database and posts directly (hubbub.publish)."""
    return Actor(key=f"s:{name}", name=name, user_id=None, service=True)


def actor_for_guest(session_key: str | None) -> Actor:
    """A guest. With a session the name is stable for that browser; without one (a program that
    keeps no cookies) every connection is a new guest."""
    seed = session_key or secrets.token_hex(16)
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return Actor(key=f"g:{digest[:24]}", name=f"guest-{digest[:6]}", user_id=None)


def actor_from(user: AbstractBaseUser | AnonymousUser | None, session_key: str | None,
               allow_guests: bool) -> Actor | None:
    """The actor for an authenticated user, else a guest when guests are allowed, else None."""
    if user is not None and user.is_authenticated and user.is_active:
        assert isinstance(user, AbstractBaseUser)
        return actor_for_user(user)
    if allow_guests:
        return actor_for_guest(session_key)
    return None
