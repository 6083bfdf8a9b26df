"""Helpers for the HTTP API suite (CONTRACT.md §3), run through Django's test Client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client

from hubbub.accounts import services as account_services

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def post_json(client: Client, path: str, body: Any, **headers: str) -> HttpResponse:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(
    response: HttpResponse, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, Any]:
    """The contract's error shape: JSON ``{"error": CODE, "detail": TEXT}`` with a fitting 4xx."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json"), (
        response["Content-Type"], response.content[:300])
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert b"<html" not in response.content.lower()
    if code is not None:
        assert body["error"] == code, body
    return body


class Api:
    """One caller: a Django test Client plus, optionally, a bearer token."""

    def __init__(self, client: Client, token: str | None = None) -> None:
        self.client = client
        self.headers = bearer(token) if token else {}

    def get(self, path: str, **headers: str) -> HttpResponse:
        return self.client.get(path, headers={**self.headers, **headers})

    def post(self, path: str, body: Any = None, **headers: str) -> HttpResponse:
        return post_json(self.client, path, {} if body is None else body, **{**self.headers, **headers})

    def delete(self, path: str, **headers: str) -> HttpResponse:
        return self.client.delete(path, headers={**self.headers, **headers})


@pytest.fixture
def make_user(db: None) -> Callable[[str], str]:
    """Creates a user; returns a bearer token for them."""

    def make(username: str) -> str:
        user = account_services.user_create(username=username, password=PASSWORD)
        return account_services.token_create(user=user)

    return make


@pytest.fixture
def as_user(make_user: Callable[[str], str]) -> Callable[[str], Api]:
    """A bearer-authenticated caller for a new user of that name."""

    def make(username: str) -> Api:
        return Api(Client(), make_user(username))

    return make


@pytest.fixture
def guest(db: None) -> Api:
    return Api(Client())
