from __future__ import annotations

from django.conf import settings
from django.db import models


class Room(models.Model):
    """A chat room. ``last_seq`` is the id of its newest message: ids are allocated by bumping it
    inside the transaction that stores the message, so they are gapless across instances."""

    name = models.CharField(max_length=64, unique=True)
    private = models.BooleanField(default=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="membership_unique")]


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    # "u:<user id>" or "g:<guest key>": who posted, for client_id idempotency.
    author_key = models.CharField(max_length=80)
    author_name = models.CharField(max_length=150)
    body = models.TextField()
    client_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq_unique"),
            models.UniqueConstraint(
                fields=["room", "author_key", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="message_client_id_unique",
            ),
        ]


class Presence(models.Model):
    """One open socket in a room. Rows are refreshed by their instance's heartbeat; a row whose
    instance died stops being refreshed and is ignored (and later deleted) once it is stale."""

    conn_id = models.CharField(max_length=32, primary_key=True)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=150)
    instance = models.CharField(max_length=32, db_index=True)
    seen_at = models.DateTimeField(db_index=True)
