"""``GET/POST /api/rooms/{room}/messages`` (CONTRACT.md §3 and the MessageEvent of §4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from hubbub.chat import services
from hubbub.chat.models import Message, Room
from tests.api.conftest import Api, assert_json_error

pytestmark = pytest.mark.django_db

EVENT_KEYS = {"type", "room", "id", "user", "message", "ts", "client_id"}
TOTAL = 260  # more than the 200 cap


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    messages = response.json()["messages"]
    for event in messages:
        assert set(event) == EVENT_KEYS
    return [event["id"] for event in messages]


def stored(room: str) -> int:
    return Message.objects.filter(room__name=room).count()


def last_seq(room: str) -> int:
    return Room.objects.get(name=room).last_seq


def assert_message_event(event: dict[str, Any], *, room: str, user: str, message: str,
                         client_id: str | None = None) -> None:
    assert set(event) == EVENT_KEYS, event
    assert event["type"] == "message"
    assert event["room"] == room
    assert isinstance(event["id"], int) and event["id"] >= 1
    assert event["user"] == user
    assert event["message"] == message
    assert event["client_id"] == client_id
    ts = datetime.fromisoformat(event["ts"])
    assert ts.utcoffset() == timedelta(0), f"ts {event['ts']!r} is not UTC"
    assert abs(ts - datetime.now(UTC)) < timedelta(minutes=5)


@pytest.fixture
def big_room(db: None) -> str:
    """The public room 'big' holding messages 1..TOTAL."""
    room = Room.objects.create(name="big", private=False, last_seq=TOTAL)
    now = timezone.now()
    Message.objects.bulk_create(
        Message(room=room, seq=n, author_key="u:0", author_name="seed", body=f"message {n}",
                client_id=None, created_at=now)
        for n in range(1, TOTAL + 1)
    )
    return room.name


# -- GET: paging --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", range(211, 261)),  # the newest 50
        ("?limit=10", range(251, 261)),
        ("?limit=1", [260]),
        ("?limit=200", range(61, 261)),
        ("?limit=201", range(61, 261)),  # capped at 200
        ("?limit=100000", range(61, 261)),
        ("?limit=99999999999999999999999", range(61, 261)),
        ("?after=0", range(1, 51)),  # the first 50 after 0
        ("?after=0&limit=200", range(1, 201)),
        ("?after=0&limit=1000", range(1, 201)),
        ("?after=10&limit=5", range(11, 16)),
        ("?after=100", range(101, 151)),
        ("?after=255", range(256, 261)),
        ("?after=259", [260]),
        ("?after=260", []),
        ("?after=1000", []),
        ("?before=100&limit=5", range(95, 100)),  # the last 5 before 100
        ("?before=100", range(50, 100)),
        ("?before=60", range(10, 60)),
        ("?before=3", [1, 2]),
        ("?before=2&limit=50", [1]),
        ("?before=1", []),
        ("?before=261", range(211, 261)),
        ("?before=1000&limit=3", range(258, 261)),
        ("?before=250&limit=500", range(50, 250)),
        ("?limit=5&before=10", range(5, 10)),
    ],
)
def test_message_pages(guest: Api, big_room: str, query: str, expected: Any) -> None:
    assert ids(guest.get(f"/api/rooms/{big_room}/messages{query}")) == list(expected)


def test_pages_are_ascending_full_events(guest: Api, big_room: str) -> None:
    messages = guest.get(f"/api/rooms/{big_room}/messages?after=5&limit=3").json()["messages"]
    assert [m["message"] for m in messages] == ["message 6", "message 7", "message 8"]
    for event in messages:
        assert event["room"] == "big" and event["user"] == "seed" and event["client_id"] is None
        assert event["type"] == "message"
        assert datetime.fromisoformat(event["ts"]).utcoffset() == timedelta(0)


def test_reading_a_whole_room_with_after(guest: Api, big_room: str) -> None:
    seen: list[int] = []
    after = 0
    while True:
        page = ids(guest.get(f"/api/rooms/{big_room}/messages?after={after}&limit=200"))
        if not page:
            break
        seen += page
        after = page[-1]
    assert seen == list(range(1, TOTAL + 1))


def test_reading_a_whole_room_backwards_with_before(guest: Api, big_room: str) -> None:
    pages: list[list[int]] = []
    page = ids(guest.get(f"/api/rooms/{big_room}/messages?limit=70"))
    while page:
        pages.append(page)
        page = ids(guest.get(f"/api/rooms/{big_room}/messages?before={page[0]}&limit=70"))
    assert [i for p in reversed(pages) for i in p] == list(range(1, TOTAL + 1))


@pytest.mark.parametrize(
    "query",
    [
        "?after=1&before=5",
        "?after=0&before=1",
        "?before=5&after=1&limit=2",
        "?limit=0",
        "?limit=-1",
        "?limit=abc",
        "?limit=1.5",
        "?after=-1",
        "?after=abc",
        "?after=1.5",
        "?before=0",
        "?before=-5",
        "?before=x",
    ],
)
def test_bad_page_queries_are_400_json(guest: Api, big_room: str, query: str) -> None:
    assert_json_error(guest.get(f"/api/rooms/{big_room}/messages{query}"), 400)


@pytest.mark.parametrize("query", ["?after=99999999999999999999999", "?before=99999999999999999999999"])
def test_huge_ids_are_not_a_server_error(guest: Api, big_room: str, query: str) -> None:
    response = guest.get(f"/api/rooms/{big_room}/messages{query}")
    if response.status_code != 200:
        assert_json_error(response, 400)


def test_a_public_room_nobody_used_is_an_empty_list(guest: Api) -> None:
    response = guest.get("/api/rooms/fresh-room/messages")
    assert response.status_code == 200
    assert response.json() == {"messages": []}
    assert not Room.objects.filter(name="fresh-room").exists(), "reading creates nothing"


@pytest.mark.parametrize("name", ["a.b", "x" * 65, "caf%C3%A9", "a%20b"])
def test_reading_a_bad_room_name_is_a_json_4xx(guest: Api, name: str) -> None:
    assert_json_error(guest.get(f"/api/rooms/{name}/messages"), (400, 404))


def test_private_room_messages(as_user: Callable[[str], Api], guest: Api) -> None:
    alice, bob, carol = as_user("alice"), as_user("bob"), as_user("carol")
    alice.post("/api/rooms", {"name": "secret", "private": True})
    alice.post("/api/rooms/secret/members", {"username": "bob"})
    assert alice.post("/api/rooms/secret/messages", {"message": "psst"}).status_code == 201
    assert ids(alice.get("/api/rooms/secret/messages")) == [1]
    assert ids(bob.get("/api/rooms/secret/messages")) == [1]
    assert_json_error(carol.get("/api/rooms/secret/messages"), 403)
    assert_json_error(carol.get("/api/rooms/secret/messages?after=0"), 403)
    assert_json_error(guest.get("/api/rooms/secret/messages"), (401, 403))


def test_outsider_body_leaks_nothing(as_user: Callable[[str], Api]) -> None:
    alice, carol = as_user("alice"), as_user("carol")
    alice.post("/api/rooms", {"name": "secret", "private": True})
    alice.post("/api/rooms/secret/messages", {"message": "the launch code is 1234"})
    response = carol.get("/api/rooms/secret/messages")
    assert_json_error(response, 403)
    assert b"1234" not in response.content


# -- POST ---------------------------------------------------------------------------------------


def test_post_answers_201_with_the_message_event(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    response = alice.post("/api/rooms/lobby/messages", {"message": "hello, world"})
    assert response.status_code == 201
    assert response["Content-Type"].startswith("application/json")
    event = response.json()
    assert_message_event(event, room="lobby", user="alice", message="hello, world")
    assert event["id"] == 1
    assert stored("lobby") == 1


def test_post_creates_a_public_room_on_first_use(as_user: Callable[[str], Api]) -> None:
    as_user("alice").post("/api/rooms/newroom/messages", {"message": "first"})
    room = Room.objects.get(name="newroom")
    assert room.private is False
    assert room.last_seq == 1


def test_posted_events_are_what_get_returns(as_user: Callable[[str], Api], guest: Api) -> None:
    alice = as_user("alice")
    posted = [alice.post("/api/rooms/lobby/messages", {"message": f"m{i}", "client_id": f"c{i}"}).json()
              for i in range(3)]
    assert guest.get("/api/rooms/lobby/messages").json()["messages"] == posted


def test_ids_are_gapless_per_room_across_posters(as_user: Callable[[str], Api], guest: Api) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    posters = [alice, bob, guest, alice, guest, bob, bob]
    got = [p.post("/api/rooms/lobby/messages", {"message": f"n{i}"}).json()["id"]
           for i, p in enumerate(posters)]
    assert got == list(range(1, len(posters) + 1))
    assert bob.post("/api/rooms/other/messages", {"message": "x"}).json()["id"] == 1
    assert alice.post("/api/rooms/lobby/messages", {"message": "next"}).json()["id"] == len(posters) + 1
    assert sorted(Message.objects.filter(room__name="lobby").values_list("seq", flat=True)) == list(
        range(1, len(posters) + 2))
    assert last_seq("lobby") == len(posters) + 1


def test_failed_posts_leave_no_gap(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    assert alice.post("/api/rooms/lobby/messages", {"message": "one"}).json()["id"] == 1
    assert alice.post("/api/rooms/lobby/messages", {"message": "  "}).status_code == 400
    assert alice.post("/api/rooms/lobby/messages", {"message": "x" * 4001}).status_code == 400
    assert alice.post("/api/rooms/lobby/messages", {"message": "x", "client_id": "c" * 65}).status_code == 400
    assert alice.post("/api/rooms/lobby/messages", {"message": "two"}).json()["id"] == 2


def test_client_id_is_echoed(as_user: Callable[[str], Api]) -> None:
    body = {"message": "hi", "client_id": "abc-123"}
    event = as_user("alice").post("/api/rooms/lobby/messages", body).json()
    assert_message_event(event, room="lobby", user="alice", message="hi", client_id="abc-123")
    assert Message.objects.get().client_id == "abc-123"


def test_repeated_client_id_gives_the_same_event_and_stores_nothing(
    as_user: Callable[[str], Api]
) -> None:
    alice = as_user("alice")
    body = {"message": "only once", "client_id": "retry-1"}
    first = alice.post("/api/rooms/lobby/messages", body)
    assert first.status_code == 201
    again = alice.post("/api/rooms/lobby/messages", body)
    assert again.status_code in (200, 201)
    assert again.json() == first.json()
    # the stored event wins even if the retry's text differs
    changed = alice.post("/api/rooms/lobby/messages", {"message": "edited?", "client_id": "retry-1"})
    assert changed.status_code in (200, 201)
    assert changed.json() == first.json()
    assert stored("lobby") == 1
    assert last_seq("lobby") == 1
    # and the next new message takes the next id: nothing was allocated by the repeats
    fresh = alice.post("/api/rooms/lobby/messages", {"message": "new", "client_id": "retry-2"})
    assert fresh.json()["id"] == 2


def test_client_id_is_per_user_and_per_room(as_user: Callable[[str], Api]) -> None:
    alice, bob = as_user("alice"), as_user("bob")
    a = alice.post("/api/rooms/lobby/messages", {"message": "a", "client_id": "same"})
    b = bob.post("/api/rooms/lobby/messages", {"message": "b", "client_id": "same"})
    c = alice.post("/api/rooms/other/messages", {"message": "c", "client_id": "same"})
    assert (a.status_code, b.status_code, c.status_code) == (201, 201, 201)
    assert (a.json()["id"], b.json()["id"], c.json()["id"]) == (1, 2, 1)
    assert b.json()["user"] == "bob"
    assert stored("lobby") == 2 and stored("other") == 1


def test_client_id_of_64_characters_is_accepted(as_user: Callable[[str], Api]) -> None:
    response = as_user("alice").post("/api/rooms/lobby/messages", {"message": "x", "client_id": "k" * 64})
    assert response.status_code == 201
    assert response.json()["client_id"] == "k" * 64


@pytest.mark.parametrize("client_id", ["k" * 65, "k" * 1000, 5, ["a"], {"a": 1}, True])
def test_bad_client_id_is_400(as_user: Callable[[str], Api], client_id: Any) -> None:
    alice = as_user("alice")
    assert_json_error(alice.post("/api/rooms/lobby/messages", {"message": "x", "client_id": client_id}), 400)
    assert Message.objects.count() == 0


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u3000"])
def test_empty_message_is_400_empty_message(as_user: Callable[[str], Api], text: str) -> None:
    alice = as_user("alice")
    assert_json_error(alice.post("/api/rooms/lobby/messages", {"message": text}), 400, "empty_message")
    assert Message.objects.count() == 0
    assert not Room.objects.filter(name="lobby").exists()


def test_message_at_the_default_limit_is_accepted(as_user: Callable[[str], Api]) -> None:
    response = as_user("alice").post("/api/rooms/lobby/messages", {"message": "x" * 4000})
    assert response.status_code == 201
    assert len(response.json()["message"]) == 4000


def test_message_over_the_default_limit_is_too_long(as_user: Callable[[str], Api]) -> None:
    alice = as_user("alice")
    assert_json_error(alice.post("/api/rooms/lobby/messages", {"message": "x" * 4001}), 400, "too_long")
    assert Message.objects.count() == 0


def test_max_message_chars_setting_is_followed(settings: Any, as_user: Callable[[str], Api]) -> None:
    settings.HUBBUB_MAX_MESSAGE_CHARS = 10
    alice = as_user("alice")
    assert alice.post("/api/rooms/lobby/messages", {"message": "é" * 10}).status_code == 201
    assert_json_error(alice.post("/api/rooms/lobby/messages", {"message": "é" * 11}), 400, "too_long")
    assert stored("lobby") == 1


@pytest.mark.parametrize(
    "body",
    [{}, {"message": None}, {"message": 5}, {"message": ["hi"]}, {"message": {"text": "hi"}},
     {"text": "hi"}, {"message": True}],
)
def test_post_with_a_bad_body_is_400(as_user: Callable[[str], Api], body: dict[str, Any]) -> None:
    assert_json_error(as_user("alice").post("/api/rooms/lobby/messages", body), 400)
    assert Message.objects.count() == 0


def test_message_text_is_kept_exactly(as_user: Callable[[str], Api], guest: Api) -> None:
    text = "  <b>bold</b> & \"quotes\" \u2603 😀\nsecond line  "
    event = as_user("alice").post("/api/rooms/lobby/messages", {"message": text}).json()
    assert event["message"] == text
    assert guest.get("/api/rooms/lobby/messages").json()["messages"][0]["message"] == text


def test_post_to_a_private_room_by_an_outsider_is_403(
    as_user: Callable[[str], Api], guest: Api
) -> None:
    alice, carol = as_user("alice"), as_user("carol")
    alice.post("/api/rooms", {"name": "secret", "private": True})
    assert_json_error(carol.post("/api/rooms/secret/messages", {"message": "hi"}), 403)
    assert_json_error(carol.post("/api/rooms/secret/messages", {"message": "hi", "client_id": "z"}), 403)
    assert_json_error(guest.post("/api/rooms/secret/messages", {"message": "hi"}), (401, 403))
    assert stored("secret") == 0
    assert last_seq("secret") == 0
    assert alice.post("/api/rooms/secret/messages", {"message": "mine"}).json()["id"] == 1


@pytest.mark.parametrize("name", ["a.b", "x" * 65, "caf%C3%A9", "a%20b"])
def test_post_to_a_bad_room_name_is_a_json_4xx(as_user: Callable[[str], Api], name: str) -> None:
    assert_json_error(as_user("alice").post(f"/api/rooms/{name}/messages", {"message": "x"}), (400, 404))
    assert not Room.objects.exists()


def test_guest_post_has_a_generated_name(guest: Api) -> None:
    event = guest.post("/api/rooms/lobby/messages", {"message": "hi"}).json()
    assert event["user"].startswith("guest-")
    assert Message.objects.get().author_name == event["user"]


# -- live delivery: published once, after the commit, with the same text ------------------------


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "publish_threadsafe", events.append)
    return events


def test_post_publishes_the_stored_event_after_commit(
    as_user: Callable[[str], Api], published: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice = as_user("alice")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = alice.post("/api/rooms/lobby/messages", {"message": "live", "client_id": "l1"})
    assert response.status_code == 201
    assert len(callbacks) == 1, "publishing waits for the commit"
    assert len(published) == 1
    event = published[0]
    assert event["room"] == "lobby" and event["id"] == 1
    assert json.loads(event["text"]) == response.json()


def test_repeats_and_refusals_publish_nothing(
    as_user: Callable[[str], Api], published: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice = as_user("alice")
    alice.post("/api/rooms/lobby/messages", {"message": "once", "client_id": "r1"})
    with django_capture_on_commit_callbacks(execute=True):
        alice.post("/api/rooms/lobby/messages", {"message": "once", "client_id": "r1"})
        alice.post("/api/rooms/lobby/messages", {"message": " "})
        alice.post("/api/rooms/lobby/messages", {"message": "x" * 4001})
    assert published == []
