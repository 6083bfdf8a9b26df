"""Test set-up shared by every suite.

The settings module reads the environment once, at import: point it at a private data dir before
Django starts, and drop any Hubbub settings the developer's shell may carry, so every run starts
from the embedded default (the in-process suites) and is hermetic.
"""

from __future__ import annotations

import os
import tempfile

from tests import outer_env  # noqa: F401 - captures DATABASE_URL / REDIS_URL first

for _name in list(os.environ):
    if _name.startswith("HUBBUB_") or _name in ("DATABASE_URL", "REDIS_URL"):
        del os.environ[_name]
os.environ["HUBBUB_DATA_DIR"] = tempfile.mkdtemp(prefix="hubbub-test-")
os.environ["DJANGO_SETTINGS_MODULE"] = "hubbub.settings"

import django  # noqa: E402

django.setup()
