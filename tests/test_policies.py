"""The worker's ``Policies`` are what its workflows schedule with (time-skipping server, stub activities).

A worker handed a short ``Policies`` object schedules every activity and the
retry-window timer with those timeouts and retry policies; one handed nothing
schedules them with the production values. Both are read back from the run's
history (ActivityTaskScheduled and TimerStarted events), as Temporal recorded
them. The stubs answer at once; only the workflow's scheduling is under test.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields, replace
from datetime import timedelta

import pytest
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import RetryPolicy

from tests.stubs import POLL_INTERVAL_SECONDS, StubActivities, run_to_close
from workflows.policies import DEFAULT_POLICIES, Policies, for_task_queue, registered

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _retry(initial_ms: int, maximum_s: int, attempts: int = 0) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=initial_ms), backoff_coefficient=1.5,
        maximum_interval=timedelta(seconds=maximum_s), maximum_attempts=attempts,
    )


# Every value differs from production's (checked below), so that a workflow
# still reading the defaults fails here.
SHORT = Policies(
    ledger_timeout=timedelta(seconds=7),
    ledger_retry=_retry(100, 2),
    transient_give_up_after=timedelta(minutes=11),
    render_timeout=timedelta(seconds=13),
    render_heartbeat_timeout=timedelta(seconds=5),
    deliver_timeout=timedelta(seconds=17),
    deliver_heartbeat_timeout=timedelta(seconds=6),
    deliver_retry=_retry(200, 3),
    ack_poll_timeout=timedelta(seconds=8),
    retry_signal_window=timedelta(seconds=19),
    webhook_timeout=timedelta(seconds=9),
    webhook_retry=_retry(300, 4),
    webhook_give_up_after=timedelta(minutes=23),
    webhook_last_chance=timedelta(seconds=3),
    ack_listener=False,
    ensure_listener_timeout=timedelta(seconds=4),
)


@dataclass(frozen=True)
class Scheduled:
    start_to_close: timedelta
    heartbeat: timedelta | None
    retry: tuple[timedelta, float, timedelta, int]


def _retry_of(retry: RetryPolicy) -> tuple[timedelta, float, timedelta, int]:
    assert retry.maximum_interval is not None
    return (retry.initial_interval, retry.backoff_coefficient, retry.maximum_interval, retry.maximum_attempts)


POLL = timedelta(seconds=POLL_INTERVAL_SECONDS)  # the ack poll retries at the connection's interval


def expected(p: Policies) -> dict[str, Scheduled]:
    return {
        "open_attempt": Scheduled(p.ledger_timeout, None, _retry_of(p.ledger_retry)),
        "render_and_store": Scheduled(p.render_timeout, p.render_heartbeat_timeout, _retry_of(p.ledger_retry)),
        "deliver": Scheduled(p.deliver_timeout, p.deliver_heartbeat_timeout, _retry_of(p.deliver_retry)),
        "mark_failed": Scheduled(p.ledger_timeout, None, _retry_of(p.ledger_retry)),
        "ensure_ack_listener": Scheduled(p.ensure_listener_timeout, None, _retry_of(p.ledger_retry)),
        "poll_ack": Scheduled(p.ack_poll_timeout, None, (POLL, 1.0, POLL, 0)),
        "send_webhook": Scheduled(p.webhook_timeout, None, _retry_of(p.webhook_retry)),
    }


def scheduled_activities(events: list[HistoryEvent]) -> dict[str, tuple[Scheduled, timedelta | None]]:
    """Activity type → (its timeouts and retry policy, its schedule-to-close) as recorded."""
    found: dict[str, tuple[Scheduled, timedelta | None]] = {}
    for event in events:
        if not event.HasField("activity_task_scheduled_event_attributes"):
            continue
        a = event.activity_task_scheduled_event_attributes
        r = a.retry_policy
        heartbeat = a.heartbeat_timeout.ToTimedelta() if a.HasField("heartbeat_timeout") else None
        found[a.activity_type.name] = (
            Scheduled(
                a.start_to_close_timeout.ToTimedelta(),
                heartbeat or None,
                (r.initial_interval.ToTimedelta(), r.backoff_coefficient, r.maximum_interval.ToTimedelta(), r.maximum_attempts),
            ),
            a.schedule_to_close_timeout.ToTimedelta() if a.HasField("schedule_to_close_timeout") else None,
        )
    return found


def timers(events: list[HistoryEvent]) -> list[timedelta]:
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in events
        if e.HasField("timer_started_event_attributes")
    ]


async def run_export(client: Client, stubs: StubActivities, policies: Policies | None) -> list[HistoryEvent]:
    """One export on a stub worker given ``policies`` (None: given nothing); its history once closed."""
    _, history, _ = await run_to_close(client, stubs, **({} if policies is None else {"policies": policies}))
    return list(history.events)


async def test_the_short_policies_differ_from_production_in_every_field_under_test():
    compared = {f.name for f in fields(Policies)} - {
        # Not scheduled by an ExportOrderWorkflow run: the ack listener's own, the worker's slots,
        # the HTTP client's timeout (tests/test_webhooks.py), the stale-.tmp age (the listener's);
        # the last chance of a callback whose window has all but run out.
        "listener_scan_timeout", "listener_scan_heartbeat_timeout", "listener_scan_retry",
        "listener_max_history_events", "stale_tmp_sweep_interval", "webhook_max_in_flight",
        "webhook_request_timeout", "webhook_local_timeout", "webhook_last_chance", "webhook_local_at_close",
        "webhook_sent_with_delivery",
    }
    same = [name for name in compared if getattr(SHORT, name) == getattr(DEFAULT_POLICIES, name)]
    assert same == []


@pytest.mark.parametrize("given", ["short", "nothing"])
async def test_a_failed_export_is_scheduled_with_its_workers_policies(time_skipping_env, given: str):
    policies = SHORT if given == "short" else None
    want = policies or DEFAULT_POLICIES
    events = await run_export(time_skipping_env.client, StubActivities(failing_attempts={1}), policies)

    found = scheduled_activities(events)
    assert set(found) == {"open_attempt", "render_and_store", "deliver", "mark_failed", "send_webhook"}
    for name, (scheduled, _) in found.items():
        assert scheduled == expected(want)[name], name
    for name in ("open_attempt", "render_and_store", "deliver"):
        assert found[name][1] == want.transient_give_up_after, name
    # The callback's window is the give-up window, counted from the FAILED transition.
    window = found["send_webhook"][1]
    assert window is not None and want.webhook_give_up_after - timedelta(minutes=1) <= window <= want.webhook_give_up_after
    # The FAILED run waited for a retry for the window, then closed.
    assert timers(events) == [want.retry_signal_window]


@pytest.mark.parametrize(
    "given", [SHORT, replace(SHORT, ack_listener=True), None], ids=["short-poll", "short-listener", "nothing"]
)
async def test_the_ack_wait_follows_its_workers_policies(time_skipping_env, given: Policies | None):
    """``ack_listener=False``: the per-export poll at once; on: the listener is asked first
    (the stub declines, so the run polls)."""
    want = given or DEFAULT_POLICIES
    events = await run_export(time_skipping_env.client, StubActivities(waits_for_ack=True), given)

    found = scheduled_activities(events)
    waits = {"ensure_ack_listener", "poll_ack"} if want.ack_listener else {"poll_ack"}
    assert set(found) == {"open_attempt", "render_and_store", "deliver", "send_webhook"} | waits
    for name, (scheduled, _) in found.items():
        assert scheduled == expected(want)[name], name


async def test_a_task_queue_runs_with_one_policies_object_at_a_time():
    queue = f"policies-{uuid.uuid4().hex[:8]}"
    assert for_task_queue(queue) is DEFAULT_POLICIES
    with registered(queue, SHORT):
        with registered(queue, Policies(**{f.name: getattr(SHORT, f.name) for f in fields(Policies)})):
            assert for_task_queue(queue) is SHORT  # an equal object joins the first one
        assert for_task_queue(queue) is SHORT
        with pytest.raises(ValueError, match=f"task queue '{queue}' already runs with other policies"):
            with registered(queue, DEFAULT_POLICIES):
                pass
    assert for_task_queue(queue) is DEFAULT_POLICIES
