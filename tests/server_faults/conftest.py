"""Fixtures of the server-fault tests."""

from __future__ import annotations

import pytest

import activities.exports as export_activities


@pytest.fixture
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deliveries send their first heartbeat after 5 s, longer than the shortened
    # timeout itself: heartbeat early so that only a real stall times out.
    monkeypatch.setattr(export_activities, "FIRST_HEARTBEAT_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(export_activities, "HEARTBEAT_EVERY_SECONDS", 0.5)
