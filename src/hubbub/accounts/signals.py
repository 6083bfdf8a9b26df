"""Open sockets follow the accounts they were opened with: a logout closes the sockets of that
session, a deleted or deactivated user's sockets close everywhere (close code 4401, through the
hubs' control group; see realtime/hub.py, which also re-checks every 15 s in case an event is lost).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from hubbub.realtime.hub import publish_threadsafe


@receiver(user_logged_out)
def close_sockets_of_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        transaction.on_commit(lambda: publish_threadsafe({"kind": "logout", "session_key": key}))


def _user_gone(pk: Any) -> None:
    transaction.on_commit(lambda: publish_threadsafe({"kind": "user_gone", "user_key": f"u:{pk}"}))


@receiver(post_delete, sender=User)
def close_sockets_of_deleted_user(sender: Any, instance: User, **kwargs: Any) -> None:
    _user_gone(instance.pk)


@receiver(post_save, sender=User)
def close_sockets_of_deactivated_user(sender: Any, instance: User, created: bool, **kwargs: Any) -> None:
    if not created and not instance.is_active:
        _user_gone(instance.pk)
