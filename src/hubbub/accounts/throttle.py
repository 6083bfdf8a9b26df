"""The sign-in throttle: after too many failed sign-ins for one username, or from one client
address, within a window, sign-ins are refused with 429 ``rate_limited`` until the oldest failure
leaves the window (OWASP: "Blocking Brute Force Attacks").

The failures live in the database (:class:`~hubbub.accounts.models.LoginFailure`), not in Django's
cache: the default cache is per process, so with several instances an attacker would get the
allowance once per instance and a restart would reset it, and the embedded default has no Redis.
Every topology has the database, and failures are rare writes: one indexed COUNT per sign-in
attempt, one INSERT (and a DELETE of expired rows) per failure. A throttled attempt writes
nothing, so an attacker hammering a locked name cannot grow the table.

Not a lock-out: a correct password is refused too while the name is throttled (else guessing
would just continue), but only for the window; sessions and bearer tokens already issued keep
working. The check and the record are not one transaction, so attempts racing in parallel may
overshoot a limit by their number; that bounds guessing all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Min
from django.utils import timezone

from hubbub.accounts.models import LoginFailure

WINDOW = timedelta(minutes=5)
MAX_PER_USERNAME = 5  # failures for one username (any address) within WINDOW
MAX_PER_ADDRESS = 20  # failures from one client address (any username) within WINDOW


@dataclass(frozen=True, slots=True)
class Throttled:
    retry_after: int  # whole seconds until an attempt is considered again


def _keys(username: str, address: str | None) -> tuple[str, str | None]:
    user_key = "user:" + username.strip().lower()[:150]
    return user_key, ("ip:" + address[:180]) if address else None


def check(*, username: str, address: str | None) -> Throttled | None:
    """Whether a sign-in for ``username`` from ``address`` may be tried now."""
    now = timezone.now()
    since = now - WINDOW
    user_key, ip_key = _keys(username, address)
    waits = []
    for key, limit in ((user_key, MAX_PER_USERNAME), (ip_key, MAX_PER_ADDRESS)):
        if key is None:
            continue
        recent = LoginFailure.objects.filter(key=key, at__gt=since)
        if recent.count() >= limit:
            # The attempt is considered again when enough failures have left the window; the
            # oldest leaving is the earliest that can happen.
            oldest = recent.aggregate(first=Min("at"))["first"] or now
            waits.append((oldest + WINDOW - now).total_seconds())
    if not waits:
        return None
    return Throttled(retry_after=max(1, math.ceil(max(waits))))


def record_failure(*, username: str, address: str | None) -> None:
    now = timezone.now()
    user_key, ip_key = _keys(username, address)
    LoginFailure.objects.filter(at__lte=now - WINDOW).delete()  # expired: nobody counts them
    LoginFailure.objects.bulk_create(
        [LoginFailure(key=key, at=now) for key in (user_key, ip_key) if key is not None]
    )


def clear(*, username: str) -> None:
    """A successful sign-in forgets that name's failures (not its address's)."""
    user_key, _ = _keys(username, None)
    failures = LoginFailure.objects.filter(key=user_key)
    if failures.exists():  # a read first: most sign-ins follow no failure and need no write lock
        failures.delete()
