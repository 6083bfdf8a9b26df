"""Hubbub's Python client: :class:`HubbubClient` (asyncio) and :class:`Client` (synchronous).

See docs/client.md.
"""

from hubbub.client.aio import HubbubClient, HubbubError, Message, Room
from hubbub.client.sync import Client

__all__ = ["Client", "HubbubClient", "HubbubError", "Message", "Room"]
