"""AckListenerWorkflow: one per connection with an ack path, looking into it once per interval.

Waiting for acks costs per connection, not per export: the listener lists
``ack_path`` once per poll interval (``AckListenerActivities.scan_ack_path``),
and each ack found is recorded in the ledger and handed to its export's run
(the ``hand_over_ack`` Update of ``ExportOrderWorkflow``) before its file moves.
Exports meanwhile wait on a durable timer, with no activity, ledger query or
dropzone request of their own.

Its id is ``erp-ack-listener-<connection id>`` (``policies.listener_id_for``);
the first export of a connection that waits for an ack starts it
(``ensure_ack_listener``, start-if-not-running), and it runs on that export's
task queue from then on. A look that fails (the dropzone refuses the login, a
permission, the network) is shown in the state and the current details, and
tried again next interval: exports keep waiting, the ack timeout is theirs.

Its history stays small: it continues as new when the server suggests it or
after ``Policies.listener_max_history_events`` events, carrying its counters over.
Operators read its state with the ``state`` query (``dropzone acks listeners``)
and in the UI's current details.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.ack_listener import AckListenerActivities
    from dropzone.contracts import ListenerInput, ListenerState, ScanInput, ScanResult
    from workflows import policies

from workflows.retry_wait import error_info_from

__all__ = ["AckListenerWorkflow"]

# Before the first look succeeded, nothing says what the connection's interval is.
FALLBACK_INTERVAL = timedelta(seconds=60)


@workflow.defn(name=policies.LISTENER_WORKFLOW_TYPE)
class AckListenerWorkflow:
    def __init__(self) -> None:
        self._policies = policies.current()  # the worker's, by task queue
        self._state: ListenerState | None = None

    @workflow.run
    async def run(self, request: ListenerInput) -> None:
        carried = request.state
        self._state = (
            carried.model_copy(update={"runs": carried.runs + 1})
            if carried is not None
            else ListenerState(erp_connection_id=request.erp_connection_id)
        )
        while True:
            interval = await self._look(request)
            if self._history_is_long():
                # No Update handler runs here (the listener has none): nothing is cut short.
                workflow.continue_as_new(ListenerInput(erp_connection_id=request.erp_connection_id, state=self._state))
            await workflow.sleep(interval)

    @workflow.query
    def state(self) -> ListenerState:
        assert self._state is not None
        return self._state

    async def _look(self, request: ListenerInput) -> timedelta:
        state = self._state
        assert state is not None
        sweep = state.last_tmp_sweep_at is None or workflow.now() - state.last_tmp_sweep_at >= self._policies.stale_tmp_sweep_interval
        try:
            result: ScanResult = await workflow.execute_activity_method(
                AckListenerActivities.scan_ack_path,
                ScanInput(erp_connection_id=request.erp_connection_id, sweep_stale_tmps=sweep),
                start_to_close_timeout=self._policies.listener_scan_timeout,
                heartbeat_timeout=self._policies.listener_scan_heartbeat_timeout,
                retry_policy=self._policies.listener_scan_retry,
                summary="look into ack_path",
            )
        except ActivityError as err:
            # The ledger or the worker, not the dropzone (that one comes back in the result).
            self._state = state.model_copy(update={"last_error": error_info_from(err), "last_error_at": workflow.now()})
            self._show()
            return timedelta(seconds=state.poll_interval_seconds) if state.poll_interval_seconds else FALLBACK_INTERVAL
        update: dict[str, object] = {
            "poll_interval_seconds": result.poll_interval_seconds,
            "files_seen": state.files_seen + result.files,
            "handed_over": state.handed_over + result.handed_over,
            "recorded_without_run": state.recorded_without_run + result.recorded_without_run,
            "rejected": state.rejected + result.rejected,
            "stale_tmp_removed": state.stale_tmp_removed + result.stale_tmp_removed,
        }
        if result.swept_tmps:
            update["last_tmp_sweep_at"] = workflow.now()
        if result.error is not None:  # no listing: the last one stays what it was
            update.update(last_error=result.error, last_error_at=workflow.now())
        else:
            update.update(
                listings=state.listings + 1, last_listing_at=result.listed_at, last_listing_files=result.files,
                last_error=None,  # last_error_at stays: when it last went wrong
            )
        self._state = state.model_copy(update=update)
        self._show()
        return timedelta(seconds=max(1, result.poll_interval_seconds))

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._policies.listener_max_history_events

    def _show(self) -> None:
        s = self._state
        assert s is not None
        last = f"{s.last_listing_at:%Y-%m-%d %H:%M:%S} UTC" if s.last_listing_at else "never"
        text = (
            f"listing ack_path every {s.poll_interval_seconds or '?'} s; last listing {last} "
            f"({s.last_listing_files} file(s)); seen {s.files_seen}, handed over {s.handed_over}, "
            f"recorded for closed runs {s.recorded_without_run}, rejected {s.rejected}, "
            f"stale .tmp removed {s.stale_tmp_removed}"
        )
        if s.last_error is not None:
            text += f"; CANNOT LIST: {s.last_error.code}: {s.last_error.message}"
        workflow.set_current_details(text)
