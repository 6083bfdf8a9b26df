"""Post into Hubbub from another Python process that shares its database and Redis, with no HTTP
hop: the message is stored, numbered and delivered to every instance exactly as if a user had
posted it (docs/client.md).

    from hubbub.publish import post_message
    post_message("deploys", "v2.3 is live", name="deploy-bot")

The process needs Hubbub's settings in its environment (``DATABASE_URL``, ``REDIS_URL``, or the
same ``HUBBUB_DATA_DIR`` for the embedded SQLite). Inside a Django project that already runs
Hubbub's settings it works as is.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

_NAME_RE = re.compile(r"[^\x00-\x1f]{1,64}")


def _setup() -> None:
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubbub.settings")
        import django

        django.setup()


def post_message(room: str, text: str, *, name: str = "service", username: str | None = None,
                 client_id: str | None = None, wait: float = 2.0) -> dict[str, Any]:
    """Store ``text`` in ``room`` and publish it. Returns the MessageEvent.

    The author is ``username`` (an existing user) when given, else the service ``name``, which
    may post in private rooms too. A repeated ``client_id`` stores nothing new (the stored event
    is returned). Waits up to ``wait`` seconds for the event to reach Redis; if Redis is down the
    message is still stored and the servers deliver it from the database within seconds.
    """
    _setup()
    from hubbub.accounts.actors import actor_for_service, actor_for_user
    from hubbub.accounts.services import user_get
    from hubbub.chat import services
    from hubbub.errors import Invalid
    from hubbub.realtime.hub import flush_background

    if username is not None:
        actor = actor_for_user(user_get(username=username))
    else:
        if not _NAME_RE.fullmatch(name):
            raise Invalid("name: 1-64 characters, no control characters")
        actor = actor_for_service(name)
    posted = services.message_post(actor=actor, room_name=room, body=text, client_id=client_id)
    flush_background(wait)
    event: dict[str, Any] = json.loads(posted.text)
    return event
