"""The security suite: fuzzing and attacks after the OWASP WebSocket cheat sheet.

The pure tests need nothing; the live ones start their own ``hubbub serve`` (tests/live/servers.py)
and stop it. The live fixtures are shared with tests/live.
"""

from __future__ import annotations

from tests.live.conftest import cluster, data_dir, embedded  # noqa: F401 - fixtures re-exported
