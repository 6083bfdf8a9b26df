"""Reads for rooms and messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet

from hubbub.accounts.actors import Actor
from hubbub.chat.models import Membership, Message, Room
from hubbub.errors import Forbidden, NotFound
from hubbub.realtime import events

PAGE_MAX = 200


@dataclass(frozen=True, slots=True)
class RoomState:
    id: int
    name: str
    private: bool
    last_seq: int


def can_access(actor: Actor, room: Room) -> bool:
    if not room.private or actor.service:
        return True
    if actor.user_id is None:
        return False
    if room.owner_id == actor.user_id:
        return True
    return Membership.objects.filter(room=room, user_id=actor.user_id).exists()


def room_for_reading(*, actor: Actor, name: str) -> Room | None:
    """The room, if it exists and ``actor`` may read it. None when it does not exist yet."""
    room = Room.objects.filter(name=name).first()
    if room is None:
        return None
    if not can_access(actor, room):
        raise Forbidden(f"room {name!r} is private")
    return room


def room_get(*, name: str) -> Room:
    room = Room.objects.filter(name=name).first()
    if room is None:
        raise NotFound(f"no room {name!r}")
    return room


def rooms_visible(*, actor: Actor) -> QuerySet[Room]:
    rooms = Room.objects.select_related("owner").order_by("name")
    if actor.user_id is None:
        return rooms.filter(private=False)
    member_of = Membership.objects.filter(user_id=actor.user_id).values("room_id")
    return rooms.filter(Q(private=False) | Q(owner_id=actor.user_id) | Q(id__in=member_of))


def room_last_seqs(*, names: list[str]) -> dict[str, int]:
    return dict(Room.objects.filter(name__in=names).values_list("name", "last_seq"))


def message_texts_after(*, room_id: int, room_name: str, after: int, limit: int) -> list[tuple[int, str]]:
    """Encoded MessageEvents with ``id > after``, ascending: what a socket sends to catch up."""
    rows = (
        Message.objects.filter(room_id=room_id, seq__gt=after)
        .order_by("seq")
        .only("seq", "author_name", "body", "client_id", "created_at")[:limit]
    )
    return [(m.seq, events.encode(events.message_event(m, room_name))) for m in rows]


def message_texts_in(*, room_name: str, after: int, limit: int) -> list[tuple[int, str]]:
    """As :func:`message_texts_after`, by room name (the hub knows rooms by name)."""
    rows = (
        Message.objects.filter(room__name=room_name, seq__gt=after)
        .order_by("seq")
        .only("seq", "author_name", "body", "client_id", "created_at")[:limit]
    )
    return [(m.seq, events.encode(events.message_event(m, room_name))) for m in rows]


def messages_page(
    *, room: Room, after: int | None = None, before: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """MessageEvents ascending by id: the first ``limit`` after ``after``, else the last ``limit``
    before ``before`` (or the newest)."""
    limit = max(1, min(limit, PAGE_MAX))
    qs = Message.objects.filter(room=room).only("seq", "author_name", "body", "client_id", "created_at")
    if after is not None:
        rows = list(qs.filter(seq__gt=after).order_by("seq")[:limit])
    else:
        if before is not None:
            qs = qs.filter(seq__lt=before)
        rows = list(qs.order_by("-seq")[:limit])
        rows.reverse()
    return [events.message_event(m, room.name) for m in rows]
