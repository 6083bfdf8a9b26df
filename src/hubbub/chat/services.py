"""Writes for rooms, members, messages and presence. Every write goes through here.

Events about a write are published only after its transaction commits
(``transaction.on_commit``), so nobody hears of a message that is not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from hubbub.accounts.actors import Actor
from hubbub.accounts.services import user_get
from hubbub.chat.models import Membership, Message, Presence, Room
from hubbub.chat.selectors import RoomState, can_access
from hubbub.errors import Conflict, EmptyMessage, Forbidden, Invalid, TooLong
from hubbub.realtime import events, protocol
from hubbub.realtime.hub import publish_threadsafe


@dataclass(frozen=True, slots=True)
class Posted:
    seq: int
    text: str  # the encoded MessageEvent, the same text every socket receives
    created: bool  # False when client_id matched an earlier post: nothing new was stored


def _check_name(name: str) -> None:
    if not protocol.valid_room_name(name):
        raise Invalid("room names are 1-64 characters of letters, digits, '_' or '-'")


def room_create(*, actor: Actor, name: str, private: bool) -> Room:
    _check_name(name)
    if actor.user_id is None:
        raise Forbidden("guests cannot create rooms; sign in first")
    try:
        with transaction.atomic():
            room = Room.objects.create(name=name, private=private, owner_id=actor.user_id)
            Membership.objects.create(room=room, user_id=actor.user_id)
    except IntegrityError:
        raise Conflict(f"room {name!r} exists") from None
    return room


def _room_get_or_create_public(name: str) -> Room:
    room, _ = Room.objects.get_or_create(name=name, defaults={"private": False})
    return room


def room_open(*, actor: Actor, name: str) -> RoomState:
    """For a socket joining ``name``: creates a public room on first use, checks access, and
    returns the room's current last id. Raises Forbidden for a private room ``actor`` is not in."""
    _check_name(name)
    room = _room_get_or_create_public(name)
    if not can_access(actor, room):
        raise Forbidden(f"room {name!r} is private")
    return RoomState(id=room.pk, name=room.name, private=room.private, last_seq=room.last_seq)


def socket_join(*, actor: Actor, name: str, conn_id: str, instance: str) -> RoomState:
    """For a socket joining ``name``: :func:`room_open`, then its presence row (one thread hop)."""
    state = room_open(actor=actor, name=name)
    presence_enter(conn_id=conn_id, room_id=state.id, name=actor.name, instance=instance)
    return state


def member_add(*, actor: Actor, room_name: str, username: str) -> bool:
    """The owner admits ``username``. Returns False when they were a member already."""
    room = _owned_room(actor, room_name)
    user = user_get(username=username)
    _, created = Membership.objects.get_or_create(room=room, user=user)
    return created


def member_remove(*, actor: Actor, room_name: str, username: str) -> None:
    room = _owned_room(actor, room_name)
    user = user_get(username=username)
    if user.pk == room.owner_id:
        raise Invalid("the owner cannot be removed from their room")
    Membership.objects.filter(room=room, user=user).delete()
    transaction.on_commit(
        lambda: publish_threadsafe(
            {"kind": "revoke", "room": room.name, "user_key": f"u:{user.pk}"}
        )
    )


def _owned_room(actor: Actor, room_name: str) -> Room:
    from hubbub.chat.selectors import room_get

    room = room_get(name=room_name)
    if actor.user_id is None or room.owner_id != actor.user_id:
        raise Forbidden(f"only the owner of {room_name!r} can manage its members")
    return room


def _next_seq(room_id: int) -> int:
    # One statement, one round trip: the row lock it takes serialises writers of this room
    # until commit, so ids are allocated without gaps across every process.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE chat_room SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq",
            [room_id],
        )
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


# PostgreSQL: the id allocation and the insert in one statement, which autocommit makes one
# transaction: one round trip per message. The room row's lock serialises this room's writers until
# the commit, so ids have no gaps; a repeated client_id fails the whole statement (nothing stored,
# no id used).
_STORE_PG = (
    "WITH s AS (UPDATE chat_room SET last_seq = last_seq + 1 WHERE id = %s RETURNING last_seq) "
    "INSERT INTO chat_message (room_id, seq, author_key, author_name, body, client_id, created_at) "
    "SELECT %s, s.last_seq, %s, %s, %s, %s, %s FROM s RETURNING seq"
)


def _validate_post(body: str, client_id: str | None) -> None:
    error = protocol.validate_message(body, settings.HUBBUB_MAX_MESSAGE_CHARS)
    if error is not None:
        kind = {"empty_message": EmptyMessage, "too_long": TooLong}.get(error.code, Invalid)
        raise kind(error.detail)
    error = protocol.validate_client_id(client_id)
    if error is not None:
        raise Invalid(error.detail)


def message_post(
    *, actor: Actor, room_name: str, body: str, client_id: str | None = None
) -> Posted:
    """Store a message and, once committed, publish it to every instance.

    Idempotent per (room, author, client_id): a repeat stores nothing and returns the stored event.
    """
    _check_name(room_name)
    _validate_post(body, client_id)
    room = _room_get_or_create_public(room_name)
    if not can_access(actor, room):
        raise Forbidden(f"room {room_name!r} is private")
    return message_store(actor=actor, room_id=room.pk, room_name=room.name, body=body,
                         client_id=client_id)


def message_store(
    *, actor: Actor, room_id: int, room_name: str, body: str, client_id: str | None = None
) -> Posted:
    """The storing half of :func:`message_post`, for a caller that has already opened the room and
    checked access (a socket does that once, when it joins; a removal closes the socket)."""
    _validate_post(body, client_id)
    created_at = timezone.now()
    try:
        if connection.vendor == "postgresql" and connection.get_autocommit():
            with connection.cursor() as cursor:
                cursor.execute(_STORE_PG, [room_id, room_id, actor.key, actor.name, body, client_id,
                                           created_at])
                row = cursor.fetchone()
            assert row is not None
            seq = int(row[0])
        else:
            with transaction.atomic():
                seq = _next_seq(room_id)
                Message.objects.create(room_id=room_id, seq=seq, author_key=actor.key,
                                       author_name=actor.name, body=body, client_id=client_id,
                                       created_at=created_at)
    except IntegrityError:
        # The same client_id again (or a concurrent repeat won the race). Everything was rolled
        # back, the id allocation included, so no gap was left: answer with the stored event.
        if client_id is not None:
            earlier = _earlier_post(room_id, room_name, actor, client_id)
            if earlier is not None:
                return earlier
        raise
    text = events.encode(events.message_event_of(
        seq=seq, room_name=room_name, user=actor.name, body=body, created_at=created_at,
        client_id=client_id))
    transaction.on_commit(
        lambda: publish_threadsafe({"kind": "message", "room": room_name, "id": seq, "text": text})
    )
    return Posted(seq=seq, text=text, created=True)


def _earlier_post(room_id: int, room_name: str, actor: Actor, client_id: str) -> Posted | None:
    message = Message.objects.filter(room_id=room_id, author_key=actor.key, client_id=client_id).first()
    if message is None:
        return None
    return Posted(
        seq=message.seq,
        text=events.encode(events.message_event(message, room_name)),
        created=False,
    )


# -- presence ---------------------------------------------------------------------------------

PRESENCE_TTL = timedelta(seconds=30)


def presence_enter(*, conn_id: str, room_id: int, name: str, instance: str) -> None:
    # conn_id is a new random id per socket: one INSERT, no lookup first.
    Presence.objects.create(conn_id=conn_id, room_id=room_id, name=name, instance=instance,
                            seen_at=timezone.now())


def presence_leave(*, conn_id: str) -> None:
    Presence.objects.filter(conn_id=conn_id).delete()


def presence_heartbeat(*, instance: str) -> None:
    """Refresh this instance's rows and drop everyone's stale ones (a dead instance's)."""
    now = timezone.now()
    Presence.objects.filter(instance=instance).update(seen_at=now)
    Presence.objects.filter(seen_at__lt=now - 2 * PRESENCE_TTL).delete()


def presence_drop_instance(*, instance: str) -> None:
    Presence.objects.filter(instance=instance).delete()


def presence_names(*, room_names: list[str]) -> dict[str, list[str]]:
    """Who is in each room: each user or guest once, however many sockets."""
    cutoff = timezone.now() - PRESENCE_TTL
    rows = (
        Presence.objects.filter(room__name__in=room_names, seen_at__gte=cutoff)
        .values_list("room__name", "name")
        .distinct()
    )
    result: dict[str, set[str]] = {name: set() for name in room_names}
    for room_name, name in rows:
        result[room_name].add(name)
    return {room: sorted(names) for room, names in result.items()}
