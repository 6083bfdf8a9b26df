"""Django settings, built from :mod:`hubbub.config` (the only module that reads the environment)."""

from __future__ import annotations

import warnings
from typing import Any

import dj_database_url

from hubbub import config as _config
from hubbub.redisconn import layer_hosts

CONFIG = _config.load()

BASE_DIR = CONFIG.data_dir
SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "channels",
    "hubbub.accounts",
    "hubbub.chat",
    "hubbub.conversions",
    "hubbub.web",
]

MIDDLEWARE = [
    "hubbub.middleware.JsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the web UI's modules and CSS) straight from the package: no collectstatic step.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hubbub.urls"
ASGI_APPLICATION = "hubbub.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]


def _databases() -> dict[str, Any]:
    url = CONFIG.database_url or f"sqlite:///{CONFIG.sqlite_path}"
    db: dict[str, Any] = dict(dj_database_url.parse(url))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so
        # two writers queue on the busy timeout instead of failing with "database is locked"
        # when a read transaction tries to upgrade.
        db["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    else:
        # Connections are kept per thread and health-checked before reuse, so a restarted
        # PostgreSQL costs one failed check, not a failed request.
        db["CONN_MAX_AGE"] = 300
        db["CONN_HEALTH_CHECKS"] = True
        db.setdefault("OPTIONS", {})["connect_timeout"] = 3
    return {"default": db}


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if CONFIG.redis is not None:
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            # One PUBLISH per event and one SUBSCRIBE per room per process (see realtime/hub.py):
            # Redis work does not grow with the number of sockets in a room.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                # One entry per shard (each room lives on one, by a hash of its group name), or
                # one Sentinel entry whose master is looked up again after a failover
                # (hubbub/redisconn.py). Each entry sets its timeouts deliberately: redis-py >= 6
                # defaults to short ones, and a dead Redis must fail a publish fast (the message
                # is already stored) instead of blocking the event loop's publishers.
                # No redis-py `retry` here: measured, it makes the layer's pub/sub connection
                # re-subscribe 15-30 s after a Redis restart instead of 0.2 s. The one publish it
                # would save is filled from the database instead.
                "hosts": layer_hosts(CONFIG.redis),
                "prefix": "hubbub",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": 8}},
]

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True
# WhiteNoise streams files through a synchronous iterator; under ASGI Django warns on every static
# request. The files are small and few (the web UI's modules and CSS): the warning is noise.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")
WHITENOISE_AUTOREFRESH = DEBUG
WHITENOISE_MAX_AGE = 60

DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

HUBBUB_MAX_MESSAGE_CHARS = CONFIG.max_message_chars
HUBBUB_ALLOW_GUESTS = CONFIG.allow_guests
HUBBUB_MAX_UPLOAD_MB = CONFIG.max_upload_mb
HUBBUB_MAX_SOCKETS_PER_USER = CONFIG.max_sockets_per_user
HUBBUB_REDIS_URL = CONFIG.redis_url
HUBBUB_REDIS = CONFIG.redis  # what REDIS_URL names: one server, shards or Sentinels
HUBBUB_DATA_DIR = CONFIG.data_dir

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"one_line": {"()": "hubbub.logfilters.OneLineRedisErrors"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["one_line"]}
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "channels_redis": {"level": "WARNING"},
        # A request for a host not in HUBBUB_ALLOWED_HOSTS gets a JSON 400; no traceback per probe.
        "django.security.DisallowedHost": {"level": "CRITICAL", "propagate": False},
    },
}
