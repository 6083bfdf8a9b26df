"""The HTTP API of CONTRACT.md §3 (auth, rooms, members, CSRF, guests, errors, ops endpoints)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from hubbub.accounts.models import ApiToken
from hubbub.chat.models import Membership, Message, Room
from tests.api.conftest import PASSWORD, Api, assert_json_error, bearer, post_json

pytestmark = pytest.mark.django_db


def signup(client: Client, username: str, password: str = PASSWORD) -> Any:
    return post_json(client, "/api/auth/signup", {"username": username, "password": password})


def me(client: Client, **headers: str) -> str:
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 200, response.content
    return str(response.json()["username"])


def token_for(client: Client, username: str, password: str = PASSWORD) -> str:
    response = post_json(client, "/api/auth/token", {"username": username, "password": password})
    assert response.status_code == 200, response.content
    return str(response.json()["token"])


# -- signup / login / logout / token ------------------------------------------------------------


def test_signup_creates_the_user_and_starts_a_session() -> None:
    client = Client()
    response = signup(client, "alice")
    assert response.status_code == 201
    assert response.json()["username"] == "alice"
    assert User.objects.filter(username="alice").exists()
    assert client.cookies.get("sessionid") is not None
    assert me(client) == "alice"
    # the session is a real login: a signed-in-only action works
    assert post_json(client, "/api/rooms", {"name": "alices"}).status_code == 201


def test_signup_with_a_taken_name_is_409() -> None:
    assert signup(Client(), "alice").status_code == 201
    assert_json_error(signup(Client(), "alice"), 409)
    assert_json_error(signup(Client(), "ALICE"), 409)
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    "username",
    ["", "a b", "a/b", "x" * 65, "<script>", "caf\u00e9", "guest-1234", "Guest-abc", "tab\there"],
)
def test_signup_with_a_bad_username_is_400(username: str) -> None:
    assert_json_error(signup(Client(), username), 400)
    assert User.objects.count() == 0


def test_signup_with_a_trailing_newline_in_the_username_is_400() -> None:
    assert_json_error(signup(Client(), "alice\n"), 400)
    assert User.objects.count() == 0


def test_create_room_with_a_trailing_newline_is_400(as_user: Callable[[str], Api]) -> None:
    assert_json_error(as_user("alice").post("/api/rooms", {"name": "lobby\n"}), 400)
    assert not Room.objects.exists()


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_signup_with_a_short_password_is_400(password: str) -> None:
    body = assert_json_error(signup(Client(), "bob", password), 400)
    assert "password" in body["detail"].lower()
    assert User.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "bob"},
        {"password": PASSWORD},
        {"username": 5, "password": PASSWORD},
        {"username": "bob", "password": 12345678},
        {"username": ["bob"], "password": PASSWORD},
        {"username": None, "password": PASSWORD},
    ],
)
def test_signup_with_missing_or_mistyped_fields_is_400(body: dict[str, Any]) -> None:
    assert_json_error(post_json(Client(), "/api/auth/signup", body), 400)
    assert User.objects.count() == 0


def test_login_and_logout() -> None:
    signup(Client(), "alice")
    client = Client()
    assert me(client).startswith("guest-")
    response = post_json(client, "/api/auth/login", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["username"] == "alice"
    assert me(client) == "alice"
    response = post_json(client, "/api/auth/logout", {})
    assert response.status_code == 200
    assert me(client).startswith("guest-")
    assert_json_error(post_json(client, "/api/rooms", {"name": "after-logout"}), (401, 403))


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "password": "wrong-password"},
        {"username": "nobody", "password": PASSWORD},
        {"username": "ALICE", "password": "wrong-password"},
    ],
)
def test_login_with_bad_credentials_is_401(body: dict[str, str]) -> None:
    signup(Client(), "alice")
    client = Client()
    assert_json_error(post_json(client, "/api/auth/login", body), 401)
    assert me(client).startswith("guest-")


def test_token_then_bearer_requests() -> None:
    signup(Client(), "alice")
    client = Client()
    response = post_json(client, "/api/auth/token", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    token = response.json()["token"]
    assert isinstance(token, str) and len(token) >= 20
    assert set(response.json()) == {"token"}
    assert client.cookies.get("sessionid") is None, "getting a token starts no session"
    fresh = Client()
    assert me(fresh, **bearer(token)) == "alice"
    response = post_json(fresh, "/api/rooms", {"name": "by-token"}, **bearer(token))
    assert response.status_code == 201
    assert response.json()["owner"] == "alice"


def test_each_token_request_gives_a_new_working_token() -> None:
    signup(Client(), "alice")
    one, two = token_for(Client(), "alice"), token_for(Client(), "alice")
    assert one != two
    assert me(Client(), **bearer(one)) == me(Client(), **bearer(two)) == "alice"
    assert ApiToken.objects.count() == 2
    assert not ApiToken.objects.filter(digest__in=[one, two]).exists(), "tokens are stored hashed"


def test_token_with_bad_credentials_is_401() -> None:
    signup(Client(), "alice")
    body = {"username": "alice", "password": "nope-nope-nope"}
    assert_json_error(post_json(Client(), "/api/auth/token", body), 401)
    assert ApiToken.objects.count() == 0


@pytest.mark.parametrize(
    "header",
    [
        "Bearer hb_not-a-real-token",
        "Bearer garbage",
        "Bearer ",
        "Bearer",
        "bearer",
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Token hb_x",
        "hb_x",
        "Bearer " + "hb_" + "a" * 5000,
        "Bearer \u00e9\u00e9",
    ],
)
def test_bad_bearer_is_401_everywhere(header: str) -> None:
    signup(Client(), "alice")
    client = Client()
    headers = {"Authorization": header}
    assert_json_error(client.get("/api/rooms", headers=headers), 401)
    assert_json_error(client.get("/api/rooms/lobby/messages", headers=headers), 401)
    assert_json_error(post_json(client, "/api/rooms/lobby/messages", {"message": "hi"}, **headers), 401)
    assert_json_error(post_json(client, "/api/rooms", {"name": "nope"}, **headers), 401)
    assert Message.objects.count() == 0
    assert not Room.objects.filter(name="nope").exists()


def test_bad_bearer_is_not_downgraded_to_a_guest_or_the_session() -> None:
    client = Client()
    signup(client, "alice")
    assert_json_error(client.get("/api/rooms", headers=bearer("hb_bogus")), 401)


def test_token_of_a_deactivated_user_is_401(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    assert alice.get("/api/rooms").status_code == 200
    User.objects.filter(username="alice").update(is_active=False)
    assert_json_error(alice.get("/api/rooms"), 401)


# -- rooms --------------------------------------------------------------------------------------


def room_names(api: Api) -> list[str]:
    response = api.get("/api/rooms")
    assert response.status_code == 200
    rooms = response.json()["rooms"]
    for room in rooms:
        assert set(room) >= {"name", "private", "owner"}
    return [room["name"] for room in rooms]


def test_create_room_201(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    response = alice.post("/api/rooms", {"name": "lobby"})
    assert response.status_code == 201
    assert response.json() == {"name": "lobby", "private": False, "owner": "alice"}
    response = alice.post("/api/rooms", {"name": "secret", "private": True})
    assert response.status_code == 201
    assert response.json() == {"name": "secret", "private": True, "owner": "alice"}
    assert set(Room.objects.values_list("name", flat=True)) == {"lobby", "secret"}


def test_create_existing_room_is_409(as_user: Callable[[str], Api]) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    assert alice.post("/api/rooms", {"name": "lobby"}).status_code == 201
    assert_json_error(alice.post("/api/rooms", {"name": "lobby"}), 409)
    assert_json_error(bob.post("/api/rooms", {"name": "lobby", "private": True}), 409)
    room = Room.objects.get(name="lobby")
    assert room.owner is not None and room.owner.username == "alice"
    assert room.private is False


def test_create_room_that_exists_from_use_is_409(as_user: Callable[[str], Api], guest: Api) -> None:
    assert guest.post("/api/rooms/used/messages", {"message": "first"}).status_code == 201
    assert_json_error(as_user("alice").post("/api/rooms", {"name": "used"}), 409)


def test_guests_cannot_create_rooms(guest: Api) -> None:
    assert_json_error(guest.post("/api/rooms", {"name": "guestroom"}), (401, 403))
    assert not Room.objects.exists()


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x" * 65, "caf\u00e9", "dot.dot"])
def test_create_room_with_a_bad_name_is_400(as_user: Callable[[str], Api], name: str) -> None:
    assert_json_error(as_user("alice").post("/api/rooms", {"name": name}), 400)
    assert not Room.objects.exists()


@pytest.mark.parametrize(
    "body", [{}, {"name": 5}, {"name": None}, {"name": ["x"]}, {"name": "ok", "private": "perhaps"}]
)
def test_create_room_with_a_bad_body_is_400(as_user: Callable[[str], Api], body: dict[str, Any]) -> None:
    assert_json_error(as_user("alice").post("/api/rooms", body), 400)
    assert not Room.objects.exists()


def test_rooms_list_hides_private_rooms_from_non_members(
    as_user: Callable[[str], Api], guest: Api
) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    alice.post("/api/rooms", {"name": "lobby"})
    alice.post("/api/rooms", {"name": "secret", "private": True})
    bob.post("/api/rooms", {"name": "bobs", "private": True})
    assert sorted(room_names(alice)) == ["lobby", "secret"]
    assert sorted(room_names(bob)) == ["bobs", "lobby"]
    assert room_names(guest) == ["lobby"]
    rooms = {r["name"]: r for r in alice.get("/api/rooms").json()["rooms"]}
    assert rooms["secret"] == {"name": "secret", "private": True, "owner": "alice"}
    assert rooms["lobby"] == {"name": "lobby", "private": False, "owner": "alice"}


def test_rooms_list_shows_a_private_room_to_its_members(as_user: Callable[[str], Api]) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    alice.post("/api/rooms", {"name": "secret", "private": True})
    assert "secret" not in room_names(bob)
    assert alice.post("/api/rooms/secret/members", {"username": "bob"}).status_code in (200, 201)
    assert "secret" in room_names(bob)


def test_rooms_list_includes_rooms_created_by_use_with_no_owner(guest: Api) -> None:
    guest.post("/api/rooms/adhoc/messages", {"message": "hi"})
    rooms = guest.get("/api/rooms").json()["rooms"]
    assert rooms == [{"name": "adhoc", "private": False, "owner": None}]


# -- members ------------------------------------------------------------------------------------


@pytest.fixture
def secret_room(as_user: Callable[[str], Api]) -> tuple[Api, Api, Api]:
    """alice owns the private room 'secret'; bob and carol exist and are not members."""
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    assert alice.post("/api/rooms", {"name": "secret", "private": True}).status_code == 201
    return alice, bob, carol


def test_owner_adds_a_member(secret_room: tuple[Api, Api, Api]) -> None:
    alice, bob, _ = secret_room
    assert_json_error(bob.get("/api/rooms/secret/messages"), 403)
    response = alice.post("/api/rooms/secret/members", {"username": "bob"})
    assert response.status_code in (200, 201)
    assert response["Content-Type"].startswith("application/json")
    assert Membership.objects.filter(room__name="secret", user__username="bob").exists()
    assert bob.get("/api/rooms/secret/messages").status_code == 200
    assert bob.post("/api/rooms/secret/messages", {"message": "hi"}).status_code == 201


def test_adding_a_member_twice_is_harmless(secret_room: tuple[Api, Api, Api]) -> None:
    alice, _, _ = secret_room
    assert alice.post("/api/rooms/secret/members", {"username": "bob"}).status_code in (200, 201)
    assert alice.post("/api/rooms/secret/members", {"username": "bob"}).status_code in (200, 201)
    assert Membership.objects.filter(room__name="secret", user__username="bob").count() == 1


def test_non_owner_cannot_add_members(secret_room: tuple[Api, Api, Api]) -> None:
    alice, bob, carol = secret_room
    assert_json_error(bob.post("/api/rooms/secret/members", {"username": "bob"}), 403)
    alice.post("/api/rooms/secret/members", {"username": "bob"})
    # even a member is not the owner
    assert_json_error(bob.post("/api/rooms/secret/members", {"username": "carol"}), 403)
    assert not Membership.objects.filter(user__username="carol").exists()
    assert_json_error(carol.get("/api/rooms/secret/messages"), 403)


def test_guest_cannot_add_members(secret_room: tuple[Api, Api, Api], guest: Api) -> None:
    assert_json_error(guest.post("/api/rooms/secret/members", {"username": "bob"}), (401, 403))


def test_adding_an_unknown_user_is_404(secret_room: tuple[Api, Api, Api]) -> None:
    alice, _, _ = secret_room
    assert_json_error(alice.post("/api/rooms/secret/members", {"username": "nobody"}), 404)


def test_adding_to_an_unknown_room_is_404(secret_room: tuple[Api, Api, Api]) -> None:
    alice, _, _ = secret_room
    assert_json_error(alice.post("/api/rooms/nosuchroom/members", {"username": "bob"}), 404)


@pytest.mark.parametrize("body", [{}, {"username": 5}, {"user": "bob"}, {"username": None}])
def test_adding_with_a_bad_body_is_400(secret_room: tuple[Api, Api, Api], body: dict[str, Any]) -> None:
    alice, _, _ = secret_room
    assert_json_error(alice.post("/api/rooms/secret/members", body), 400)


def test_owner_removes_a_member(secret_room: tuple[Api, Api, Api]) -> None:
    alice, bob, _ = secret_room
    alice.post("/api/rooms/secret/members", {"username": "bob"})
    assert bob.get("/api/rooms/secret/messages").status_code == 200
    response = alice.delete("/api/rooms/secret/members/bob")
    assert response.status_code == 200
    assert not Membership.objects.filter(room__name="secret", user__username="bob").exists()
    assert_json_error(bob.get("/api/rooms/secret/messages"), 403)
    assert_json_error(bob.post("/api/rooms/secret/messages", {"message": "still here?"}), 403)
    assert "secret" not in room_names(bob)
    assert Message.objects.count() == 0


def test_non_owner_cannot_remove_members(secret_room: tuple[Api, Api, Api]) -> None:
    alice, bob, _ = secret_room
    alice.post("/api/rooms/secret/members", {"username": "bob"})
    alice.post("/api/rooms/secret/members", {"username": "carol"})
    assert_json_error(bob.delete("/api/rooms/secret/members/carol"), 403)
    assert Membership.objects.filter(room__name="secret", user__username="carol").exists()


def test_removing_an_unknown_user_or_room_is_404(secret_room: tuple[Api, Api, Api]) -> None:
    alice, _, _ = secret_room
    assert_json_error(alice.delete("/api/rooms/secret/members/nobody"), 404)
    assert_json_error(alice.delete("/api/rooms/nosuchroom/members/bob"), 404)


def test_owner_cannot_remove_themself(secret_room: tuple[Api, Api, Api]) -> None:
    alice, _, _ = secret_room
    assert_json_error(alice.delete("/api/rooms/secret/members/alice"), 400)
    assert alice.get("/api/rooms/secret/messages").status_code == 200


# -- CSRF ---------------------------------------------------------------------------------------


def csrf_session(username: str = "alice") -> tuple[Client, str]:
    """A browser-like client (CSRF enforced) signed in with a session; returns it and its token."""
    client = Client(enforce_csrf_checks=True)
    assert signup(client, username).status_code == 201, "signup needs no CSRF token"
    if "csrftoken" not in client.cookies:
        client.get("/")  # the page sets the cookie
    return client, client.cookies["csrftoken"].value


def test_session_post_without_csrf_token_is_403() -> None:
    client, _ = csrf_session()
    assert_json_error(post_json(client, "/api/rooms", {"name": "nocsrf"}), 403)
    assert_json_error(post_json(client, "/api/rooms/lobby/messages", {"message": "hi"}), 403)
    assert not Room.objects.exists()
    assert Message.objects.count() == 0


def test_session_post_with_a_wrong_csrf_token_is_403() -> None:
    client, _ = csrf_session()
    response = post_json(client, "/api/rooms", {"name": "badcsrf"}, **{"X-CSRFToken": "x" * 32})
    assert_json_error(response, 403)
    assert not Room.objects.exists()


def test_session_post_with_csrf_token_succeeds() -> None:
    client, token = csrf_session()
    csrf = {"X-CSRFToken": token}
    assert post_json(client, "/api/rooms", {"name": "withcsrf", "private": True}, **csrf).status_code == 201
    response = post_json(client, "/api/rooms/withcsrf/messages", {"message": "hi"}, **csrf)
    assert response.status_code == 201
    assert response.json()["user"] == "alice"
    assert Message.objects.count() == 1


def test_csrf_on_member_add_and_remove() -> None:
    client, token = csrf_session()
    User.objects.create_user("bob", password=PASSWORD)
    csrf = {"X-CSRFToken": token}
    post_json(client, "/api/rooms", {"name": "secret", "private": True}, **csrf)
    assert_json_error(post_json(client, "/api/rooms/secret/members", {"username": "bob"}), 403)
    assert not Membership.objects.filter(user__username="bob").exists()
    assert post_json(client, "/api/rooms/secret/members", {"username": "bob"}, **csrf).status_code in (
        200, 201)
    assert_json_error(client.delete("/api/rooms/secret/members/bob"), 403)
    assert Membership.objects.filter(user__username="bob").exists()
    assert client.delete("/api/rooms/secret/members/bob", headers=csrf).status_code == 200
    assert not Membership.objects.filter(user__username="bob").exists()


def test_logout_with_a_session_needs_the_csrf_token() -> None:
    client, token = csrf_session()
    assert_json_error(post_json(client, "/api/auth/logout", {}), 403)
    assert me(client) == "alice"
    assert post_json(client, "/api/auth/logout", {}, **{"X-CSRFToken": token}).status_code == 200
    assert me(client).startswith("guest-")


def test_safe_methods_need_no_csrf_token() -> None:
    client, _ = csrf_session()
    assert client.get("/api/rooms").status_code == 200
    assert client.get("/api/rooms/lobby/messages").status_code == 200


def test_login_and_token_need_no_csrf_token_even_with_a_session() -> None:
    client, _ = csrf_session("alice")
    User.objects.create_user("bob", password=PASSWORD)
    body = {"username": "bob", "password": PASSWORD}
    assert post_json(client, "/api/auth/login", body).status_code == 200
    assert me(client) == "bob"
    assert post_json(client, "/api/auth/token", body).status_code == 200
    assert signup(client, "carol").status_code == 201


def test_bearer_requests_need_no_csrf_token() -> None:
    User.objects.create_user("alice", password=PASSWORD)
    token = token_for(Client(), "alice")
    client = Client(enforce_csrf_checks=True)
    auth = bearer(token)
    assert post_json(client, "/api/rooms", {"name": "bearer-room"}, **auth).status_code == 201
    assert post_json(client, "/api/rooms/bearer-room/messages", {"message": "hi"}, **auth).status_code == 201


def test_bearer_requests_need_no_csrf_token_even_with_a_session_cookie() -> None:
    client, _ = csrf_session("alice")
    User.objects.create_user("bob", password=PASSWORD)
    auth = bearer(token_for(Client(), "bob"))
    response = post_json(client, "/api/rooms/lobby/messages", {"message": "from bob"}, **auth)
    assert response.status_code == 201
    assert response.json()["user"] == "bob"


def test_guest_without_a_session_needs_no_csrf_token() -> None:
    client = Client(enforce_csrf_checks=True)
    response = post_json(client, "/api/rooms/lobby/messages", {"message": "hi from a program"})
    assert response.status_code == 201
    assert response.json()["user"].startswith("guest-")


# -- guests -------------------------------------------------------------------------------------


def test_guests_read_and_post_in_public_rooms_by_default(guest: Api) -> None:
    assert guest.get("/api/rooms").status_code == 200
    response = guest.post("/api/rooms/lobby/messages", {"message": "hello"})
    assert response.status_code == 201
    assert re.fullmatch(r"guest-\w+", response.json()["user"])
    messages = guest.get("/api/rooms/lobby/messages").json()["messages"]
    assert [m["message"] for m in messages] == ["hello"]


def test_guests_cannot_read_or_post_in_private_rooms(
    secret_room: tuple[Api, Api, Api], guest: Api
) -> None:
    assert_json_error(guest.get("/api/rooms/secret/messages"), (401, 403))
    assert_json_error(guest.post("/api/rooms/secret/messages", {"message": "let me in"}), (401, 403))
    assert Message.objects.count() == 0


def test_guests_not_allowed(settings: Any, as_user: Callable[[str], Api], guest: Api) -> None:
    alice = as_user("alice")
    assert alice.post("/api/rooms/lobby/messages", {"message": "before"}).status_code == 201
    settings.HUBBUB_ALLOW_GUESTS = False
    assert_json_error(guest.get("/api/rooms"), 401)
    assert_json_error(guest.get("/api/rooms/lobby/messages"), 401)
    assert_json_error(guest.get("/api/rooms/never-used/messages"), 401)
    assert_json_error(guest.post("/api/rooms/lobby/messages", {"message": "sneaky"}), 401)
    assert_json_error(guest.post("/api/rooms/brand-new/messages", {"message": "sneaky"}), 401)
    assert_json_error(guest.get("/api/auth/me"), 401)
    assert Message.objects.count() == 1
    assert not Room.objects.filter(name="brand-new").exists()
    # signed-in callers are not affected; signing up, logging in and tokens still work
    assert alice.get("/api/rooms").status_code == 200
    assert alice.post("/api/rooms/lobby/messages", {"message": "after"}).status_code == 201
    client = Client()
    assert signup(client, "bob").status_code == 201
    assert client.get("/api/rooms").status_code == 200
    assert token_for(Client(), "bob")


# -- errors are JSON, never HTML, never 500 -----------------------------------------------------

POST_ENDPOINTS = [
    "/api/auth/signup",
    "/api/auth/login",
    "/api/auth/token",
    "/api/rooms",
    "/api/rooms/lobby/members",
    "/api/rooms/lobby/messages",
]

MALFORMED_BODIES = ["{", "{'message': 'x'}", "not json", '{"message": "x",}', "\xff\xfe", "[" * 10_000]


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_malformed_json_bodies_are_400_json(
    as_user: Callable[[str], Api], guest: Api, path: str, body: str
) -> None:
    alice = as_user("alice")
    alice.post("/api/rooms", {"name": "lobby"})
    for api in (alice, guest):
        assert_json_error(api.post(path, body), 400)
    assert Message.objects.count() == 0


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@pytest.mark.parametrize("body", ["[]", "[1, 2]", '"text"', "42", "null", "true", ""])
def test_json_bodies_that_are_not_objects_are_400_json(
    as_user: Callable[[str], Api], path: str, body: str
) -> None:
    alice = as_user("alice")
    alice.post("/api/rooms", {"name": "lobby"})
    assert_json_error(alice.post(path, body), 400)


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_form_encoded_bodies_are_400_json(as_user: Callable[[str], Api], path: str) -> None:
    alice = as_user("alice")
    alice.post("/api/rooms", {"name": "lobby"})
    response = alice.client.post(path, {"message": "x", "username": "u", "password": "p"},
                                 headers=alice.headers)
    assert_json_error(response, (400, 415))


def test_oversized_body_is_a_json_4xx(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    body = json.dumps({"message": "x" * (3 * 1024 * 1024)})
    assert_json_error(alice.post("/api/rooms/lobby/messages", body), (400, 413))
    assert Message.objects.count() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/",
        "/api/nope",
        "/api/rooms/lobby",
        "/api/rooms/lobby/messages/1",
        "/api/rooms/lobby/nope",
        "/api/auth",
        "/api/rooms/",
        "/nope",
        "/static/nope.js",
        "/admin/",
        "/ws/chat/lobby/",
        "/api/openapi.yaml",
    ],
)
def test_unknown_paths_are_404_json(guest: Api, path: str) -> None:
    assert_json_error(guest.get(path), 404)
    assert_json_error(guest.post(path, {}), (404, 405))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/rooms"),
        ("delete", "/api/rooms"),
        ("patch", "/api/rooms/lobby/messages"),
        ("get", "/api/auth/signup"),
        ("get", "/api/auth/login"),
        ("delete", "/api/rooms/lobby/messages"),
        ("get", "/api/rooms/lobby/members/bob"),
    ],
)
def test_wrong_methods_are_405_json(guest: Api, method: str, path: str) -> None:
    response = getattr(guest.client, method)(path)
    assert_json_error(response, 405)
    assert response.get("Allow"), "a 405 says which methods the path takes"
    assert method.upper() not in response["Allow"]
    assert Message.objects.count() == 0


# -- ops endpoints and the schema ---------------------------------------------------------------


def test_livez(guest: Api) -> None:
    assert guest.get("/livez").status_code == 200


def test_readyz_on_the_embedded_default(guest: Api) -> None:
    response = guest.get("/readyz")
    assert response.status_code == 200, response.content


def metric_value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_is_prometheus_text(guest: Api) -> None:
    response = guest.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "hubbub_" in text
    assert re.search(r"^# TYPE hubbub_\w+ (counter|gauge|histogram|summary)$", text, re.M)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[a-zA-Z_:][\w:]*(\{.*\})? \S+( \d+)?", line), line


def test_metrics_count_http_posts(guest: Api) -> None:
    sample = 'hubbub_messages_posted_total{via="http"}'
    before = metric_value(guest.get("/metrics").content.decode(), sample)
    assert guest.post("/api/rooms/lobby/messages", {"message": "counted"}).status_code == 201
    after = metric_value(guest.get("/metrics").content.decode(), sample)
    assert after == before + 1


def test_openapi_schema_lists_the_contract_paths(guest: Api) -> None:
    response = guest.get("/api/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    schema = json.loads(response.content)
    assert str(schema["openapi"]).startswith("3.")
    paths = schema["paths"]
    expected = {
        "/api/auth/signup": {"post"},
        "/api/auth/login": {"post"},
        "/api/auth/logout": {"post"},
        "/api/auth/token": {"post"},
        "/api/rooms": {"get", "post"},
        "/api/rooms/{room}/members": {"post"},
        "/api/rooms/{room}/messages": {"get", "post"},
    }
    for path, methods in expected.items():
        assert path in paths, f"{path} missing from the schema"
        assert methods <= set(paths[path]), (path, set(paths[path]))
    params = {p["name"] for p in paths["/api/rooms/{room}/messages"]["get"].get("parameters", [])}
    assert {"after", "before", "limit"} <= params
