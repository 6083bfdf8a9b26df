"""Prometheus metrics of this process, served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

WS_CONNECTIONS = Gauge("hubbub_ws_connections", "Open chat sockets", registry=REGISTRY)
MESSAGES_POSTED = Counter(
    "hubbub_messages_posted_total", "Messages stored", ["via"], registry=REGISTRY
)
WS_ERRORS = Counter("hubbub_ws_errors_total", "Error events sent", ["code"], registry=REGISTRY)
EVENTS_PUBLISHED = Counter(
    "hubbub_events_published_total", "Events published to the channel layer", registry=REGISTRY
)
PUBLISH_FAILURES = Counter(
    "hubbub_publish_failures_total",
    "Events that could not be published (receivers catch up from the database)",
    registry=REGISTRY,
)
GAP_SYNCS = Counter(
    "hubbub_gap_syncs_total", "Rooms brought up to date from the database", registry=REGISTRY
)
SLOW_CLOSES = Counter(
    "hubbub_slow_socket_closes_total", "Sockets closed because they could not keep up",
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
