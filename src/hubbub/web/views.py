"""The browser client: one page (the chat), its ES modules and CSS under static/hubbub/."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from hubbub.realtime.protocol import valid_room_name


@ensure_csrf_cookie
def app(request: HttpRequest, room: str | None = None) -> HttpResponse:
    """The chat page, at ``/`` and ``/r/<room>/`` (a room's address can be shared)."""
    if room is not None and not valid_room_name(room):
        room = None
    if not request.user.is_authenticated and settings.HUBBUB_ALLOW_GUESTS and not request.session.session_key:
        # A guest's name and client_id idempotency follow the session: give the browser one, so a
        # reconnecting page is the same guest and its resent posts are recognised.
        request.session["guest"] = True
        request.session.save()
    return render(request, "hubbub/app.html", {
        "allow_guests": settings.HUBBUB_ALLOW_GUESTS,
        "max_chars": settings.HUBBUB_MAX_MESSAGE_CHARS,
        "initial_room": room or "",
        "username": request.user.get_username() if request.user.is_authenticated else "",
    })
