"""What the environment said before the test set-up cleaned it (imported first by conftest.py).

The live suites use a PostgreSQL or Redis server named here when one is given (each run still
creates its own database on it); otherwise they find or start their own.
"""

from __future__ import annotations

import os

DATABASE_URL = os.environ.get("DATABASE_URL") or None
REDIS_URL = os.environ.get("REDIS_URL") or None
