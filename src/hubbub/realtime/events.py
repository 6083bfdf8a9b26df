"""Server → client events: their shapes and their one encoding.

An event is encoded to JSON text once, where it is created, and that same text is handed to every
socket that receives it (no JSON work per member).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from hubbub.chat.models import Message


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def iso_ts(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_event(message: Message, room_name: str) -> dict[str, Any]:
    return message_event_of(seq=message.seq, room_name=room_name, user=message.author_name,
                            body=message.body, created_at=message.created_at,
                            client_id=message.client_id)


def message_event_of(*, seq: int, room_name: str, user: str, body: str, created_at: datetime,
                     client_id: str | None) -> dict[str, Any]:
    return {
        "type": "message",
        "room": room_name,
        "id": seq,
        "user": user,
        "message": body,
        "ts": iso_ts(created_at),
        "client_id": client_id,
    }


def presence_event(users: list[str]) -> str:
    return encode({"type": "presence", "users": users})


def typing_event(user: str) -> str:
    return encode({"type": "typing", "user": user})


PONG = encode({"type": "pong"})


def group_name(room: str) -> str:
    """The channel-layer group of a room (room names are already group-name safe)."""
    return f"room.{room}"


def job_room(job_id: str) -> str:
    """The hub key of a job's sockets (shares the rooms' fan-out; never a chat room name,
    which cannot contain '.')."""
    return f"job.{job_id}"


def is_job_room(name: str) -> bool:
    return name.startswith("job.")
