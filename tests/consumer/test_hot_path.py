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
    # the room lookup, then BEGIN, UPDATE … RETURNING (the id), INSERT, COMMIT; a client_id adds
    # one lookup of an earlier post
    assert len(plain) <= 5, [q["sql"] for q in plain]
    assert len(with_id) == len(plain) + 1, [q["sql"] for q in with_id]


def test_catch_up_reads_in_batches_not_per_message() -> None:
    actor = actor_for_guest("session")
    for n in range(30):
        services.message_post(actor=actor, room_name="batch", body=f"m{n}")
    room = selectors.room_get(name="batch")
    with CaptureQueriesContext(connection) as queries:
        texts = selectors.message_texts_after(room_id=room.pk, room_name="batch", after=0, limit=1000)
    assert [seq for seq, _ in texts] == list(range(1, 31))
    assert len(queries) == 1
