"""The sign-in throttle (src/hubbub/accounts/throttle.py) through the HTTP API, in process.

After 5 failed sign-ins for one name (any address) or 20 from one address (any name) within 5
minutes, ``/api/auth/login`` and ``/api/auth/token`` answer 429 ``rate_limited`` with
``retry_after`` (and a ``Retry-After`` header), even for the right password; when the window has
passed, sign-in works again. The live test of the same throttle across two instances is in
test_http_security.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from hubbub.accounts import throttle
from hubbub.accounts.models import LoginFailure
from tests.api.conftest import PASSWORD, assert_json_error, post_json

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password=PASSWORD)


def attempt(path: str, username: str, password: str, address: str = "10.0.0.1") -> Any:
    return post_json(Client(REMOTE_ADDR=address), path, {"username": username, "password": password})


def assert_throttled(response: Any) -> int:
    body = assert_json_error(response, 429, "rate_limited")
    retry_after = body["retry_after"]
    assert isinstance(retry_after, int) and 1 <= retry_after <= 300, body
    assert response["Retry-After"] == str(retry_after)
    return retry_after


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/token"])
def test_five_failures_for_a_name_throttle_it_even_with_the_right_password(alice: User, path: str) -> None:
    for i in range(throttle.MAX_PER_USERNAME):
        assert_json_error(attempt(path, "alice", f"wrong-{i}", address=f"10.0.1.{i}"), 401, "unauthorized")
    assert_throttled(attempt(path, "alice", PASSWORD, address="10.0.2.1"))
    assert_throttled(attempt(path, "ALICE", "wrong"))  # the name is compared without case
    # Another name is not affected.
    User.objects.create_user("bob", password=PASSWORD)
    assert attempt(path, "bob", PASSWORD).status_code == 200


def test_login_and_token_failures_count_together(alice: User) -> None:
    for i in range(throttle.MAX_PER_USERNAME):
        path = "/api/auth/login" if i % 2 else "/api/auth/token"
        assert attempt(path, "alice", "wrong").status_code == 401
    assert_throttled(attempt("/api/auth/token", "alice", PASSWORD))
    assert_throttled(attempt("/api/auth/login", "alice", PASSWORD))


def test_twenty_failures_from_one_address_throttle_that_address_only(alice: User) -> None:
    for i in range(throttle.MAX_PER_ADDRESS):
        assert attempt("/api/auth/login", f"nobody{i}", "wrong", address="10.9.9.9").status_code == 401
    assert_throttled(attempt("/api/auth/login", "alice", PASSWORD, address="10.9.9.9"))
    assert attempt("/api/auth/login", "alice", PASSWORD, address="10.9.9.10").status_code == 200


def test_throttled_attempts_store_nothing(alice: User) -> None:
    for _ in range(throttle.MAX_PER_USERNAME):
        attempt("/api/auth/login", "alice", "wrong")
    rows = LoginFailure.objects.count()
    for _ in range(50):
        assert_throttled(attempt("/api/auth/login", "alice", "wrong"))
    assert LoginFailure.objects.count() == rows


def test_sign_in_works_again_once_the_window_has_passed(alice: User) -> None:
    for _ in range(throttle.MAX_PER_USERNAME):
        attempt("/api/auth/login", "alice", "wrong")
    retry_after = assert_throttled(attempt("/api/auth/login", "alice", PASSWORD))
    assert retry_after > throttle.WINDOW.total_seconds() - 30
    # Age the failures as the clock would: just inside the window still throttles...
    LoginFailure.objects.update(at=timezone.now() - throttle.WINDOW + timedelta(seconds=5))
    assert assert_throttled(attempt("/api/auth/login", "alice", PASSWORD)) <= 5
    # ...just outside it does not, and the expired rows are swept by the next failure.
    LoginFailure.objects.update(at=timezone.now() - throttle.WINDOW - timedelta(seconds=1))
    assert attempt("/api/auth/login", "alice", PASSWORD).status_code == 200
    assert attempt("/api/auth/login", "alice", "wrong").status_code == 401
    assert LoginFailure.objects.filter(at__lt=timezone.now() - throttle.WINDOW).count() == 0


def test_a_successful_sign_in_forgets_the_names_failures(alice: User) -> None:
    for _ in range(throttle.MAX_PER_USERNAME - 1):
        attempt("/api/auth/login", "alice", "wrong")
    assert attempt("/api/auth/login", "alice", PASSWORD).status_code == 200
    for _ in range(throttle.MAX_PER_USERNAME - 1):
        assert attempt("/api/auth/login", "alice", "wrong").status_code == 401
    assert attempt("/api/auth/login", "alice", PASSWORD).status_code == 200


def test_the_schema_documents_the_429(alice: User) -> None:
    schema = Client().get("/api/openapi.json").json()
    for path in ("/api/auth/login", "/api/auth/token"):
        assert "429" in schema["paths"][path]["post"]["responses"], path
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "session"}
