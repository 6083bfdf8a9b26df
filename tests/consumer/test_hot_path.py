"""Query counts on the message path (Zulip's assert_database_query_count habit)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hubbub.accounts.actors import actor_for_guest
from hubbub.chat import selectors, services

pytestmark = pytest.mark.django_db(transaction=True)


def test_posting_costs_a_fixed_number_of_queries_whatever_the_room_size() -> None:
    actor = actor_for_guest("session")
    services.message_post(actor=actor, room_name="hot", body="warm-up")
    for n in range(50):
        services.message_post(actor=actor, room_name="hot", body=f"m{n}")
    with CaptureQueriesContext(connection) as plain:
        services.message_post(actor=actor, room_name="hot", body="counted")
    with CaptureQueriesContext(connection) as with_id:
        services.message_post(actor=actor, room_name="hot", body="counted", client_id="c-1")
    # the room lookup, then BEGIN, UPDATE … RETURNING (the id), INSERT, COMMIT (on PostgreSQL the
    # last four are one statement); a client_id costs nothing more: a repeat is caught by the
    # unique constraint, not looked up first
    assert len(plain) <= 5, [q["sql"] for q in plain]
    assert len(with_id) == len(plain), [q["sql"] for q in with_id]


def test_a_socket_post_is_one_statement_on_postgresql_and_no_room_lookup() -> None:
    actor = actor_for_guest("session")
    services.message_post(actor=actor, room_name="sock", body="warm-up")
    room = selectors.room_get(name="sock")
    with CaptureQueriesContext(connection) as queries:
        posted = services.message_store(actor=actor, room_id=room.pk, room_name="sock", body="hi",
                                        client_id="once")
    expected = 1 if connection.vendor == "postgresql" else 4  # SQLite: BEGIN, UPDATE, INSERT, COMMIT
    assert len(queries) <= expected, [q["sql"] for q in queries]
    again = services.message_store(actor=actor, room_id=room.pk, room_name="sock", body="hi",
                                   client_id="once")
    assert (again.seq, again.text, again.created) == (posted.seq, posted.text, False)
    after = services.message_store(actor=actor, room_id=room.pk, room_name="sock", body="next")
    assert after.seq == posted.seq + 1  # the refused repeat used no id


def test_catch_up_reads_in_batches_not_per_message() -> None:
    actor = actor_for_guest("session")
    for n in range(30):
        services.message_post(actor=actor, room_name="batch", body=f"m{n}")
    room = selectors.room_get(name="batch")
    with CaptureQueriesContext(connection) as queries:
        texts = selectors.message_texts_after(room_id=room.pk, room_name="batch", after=0, limit=1000)
    assert [seq for seq, _ in texts] == list(range(1, 31))
    assert len(queries) == 1
