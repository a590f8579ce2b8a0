"""``/draft-orders/{draft_order_id}``: push, retry-push, and every attempt of one export.

Tenancy: a token acts for one organisation. Another organisation's drafts and
connections answer 404, exactly like ids that do not exist, so a token learns
nothing about other tenants.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from dropzone.errors import ExportNotFoundError, InvalidDraftError, TemporalUnavailableError
from dropzone.export_v1 import DraftOrder
from dropzone.ledger import ExportRecord, ExportStatus, Ledger
from dropzone.ledger.webhooks import WebhookEvents
from starter import api
from starter.http.body import json_body, push_body, require_json, small_json
from starter.http.deps import ClientDep, CurrentToken, DraftCallerDep, LedgerDep, ResourcesDep, SettingsDep
from starter.http.problems import Problem, ProblemError, from_dropzone_error, responses
from starter.http.schemas import (
    DraftExports,
    ExportAttempt,
    PushAccepted,
    PushRequest,
    RetryAccepted,
    RetryPushRequest,
)
from workflows.policies import SA_ORG_ID, workflow_id_for

router = APIRouter(prefix="/draft-orders", tags=["draft orders"])

# How long a just-started run may take to name its organisation (search attribute OrgId).
ORG_KNOWN_WITHIN_SECONDS = 10.0

DraftId = Annotated[UUID, Path(description="The draft order's id (`draft_order_id` in the draft).")]


def _not_found(draft_order_id: UUID) -> ProblemError:
    return ProblemError(404, "not-found", "Not found", f"no export of draft order {draft_order_id} in this organisation")


EXPORTS_PATH = "/{draft_order_id}/exports"


def _status_url(request: Request, draft_order_id: UUID) -> str:
    """The ``draft_exports`` route's URL (``url_for`` would search every route, on every push)."""
    return f"{str(request.base_url).rstrip('/')}{router.prefix}{EXPORTS_PATH.format(draft_order_id=draft_order_id)}"


@dataclass(frozen=True)
class _Run:
    org_id: UUID | None
    running: bool
    latest: ExportRecord | None


async def _find_run(client: Client, ledger: Ledger, draft_order_id: UUID) -> _Run | None:
    """Whose export of this draft it is, whether its run is open, its latest attempt; None when there is none.

    The ledger knows every draft that got as far as an attempt; Temporal's
    ``OrgId`` search attribute also knows a run that failed before one.
    """
    latest = await run_in_threadpool(ledger.latest_export, draft_order_id)
    handle = client.get_workflow_handle(workflow_id_for(draft_order_id))
    deadline = time.monotonic() + ORG_KNOWN_WITHIN_SECONDS
    while True:
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return _Run(latest.org_id, False, latest) if latest is not None else None
            raise TemporalUnavailableError(f"Temporal refused the request: {exc.message}") from None
        running = description.status == WorkflowExecutionStatus.RUNNING
        if latest is not None:
            return _Run(latest.org_id, running, latest)
        org = description.typed_search_attributes.get(SA_ORG_ID)
        # start_export sets OrgId when it starts a run; a run started by another
        # client gets it from the workflow's first step: wait for that.
        if org or not running or time.monotonic() > deadline:
            return _Run(UUID(org) if org else None, running, None)
        await asyncio.sleep(0.1)


@router.post(
    "/{draft_order_id}/push",
    status_code=202,
    response_model=PushAccepted,
    summary="Export an approved draft order to an ERP connection",
    description=(
        "Starts the export workflow of the draft, or joins it while its run is open (a double push makes one file). "
        "After the run has closed, a second push is refused with 409 unless `force` is true. Drafts above "
        "`DROPZONE_INLINE_DRAFT_LIMIT_BYTES` travel through object storage by reference. A bad draft is refused "
        "with 422 naming every bad field, before anything is written."
    ),
    openapi_extra=json_body(PushRequest),
    responses=responses(400, 401, 404, 409, 413, 415, 422, 503),
)
async def push(
    request: Request, draft_order_id: DraftId, caller: DraftCallerDep, resources: ResourcesDep
) -> PushAccepted:
    # Few dependencies on purpose: resolving each costs every push (benchmarks/bench_api.py).
    await require_json(request)
    token, tokens, settings = caller.token, resources.tokens, resources.settings
    client = await resources.client()
    async with push_body(request) as body:
        connection_id = _connection_id(body.erp_connection_id)
        org = tokens.known_connection_org(connection_id) or await run_in_threadpool(
            tokens.connection_org, connection_id
        )
        if org != token.org_id:
            raise ProblemError(404, "not-found", "Not found", f"no connection {connection_id} in this organisation")

        def check(draft: DraftOrder) -> None:
            """Runs in start_export's thread once the draft is valid, before anything is stored."""
            if draft.draft_order_id != draft_order_id:
                raise _invalid("draft.draft_order_id", f"must equal the path's draft order id {draft_order_id}")
            if draft.org_id != token.org_id:
                raise _invalid(
                    "draft.org_id", f"must be the connection's organisation (connection {connection_id} belongs "
                    f"to org {token.org_id}, the draft to org {draft.org_id})"
                )
            # Asked with the token (one round trip); a run of another organisation that
            # opened since is caught below, when the start joins it.
            if caller.draft_owner is not None and caller.draft_owner != token.org_id:
                raise _not_found(draft_order_id)  # the id is another organisation's

        try:
            started = await api.start_export(
                client, erp_connection_id=connection_id, store=resources.store, force=body.force,
                draft=body.draft if body.draft is not None else body.draft_file,  # type: ignore[arg-type]
                task_queue=settings.task_queue, inline_limit_bytes=settings.inline_draft_limit_bytes,
                check_draft=check,
            )
        except InvalidDraftError as exc:
            raise from_dropzone_error(exc, within="draft") from None
    if not started.started_new:
        # Joined an open run: one that has no attempt yet is known only to Temporal.
        existing = await _find_run(client, resources.ledger, draft_order_id)
        if existing is not None and existing.org_id is not None and existing.org_id != token.org_id:
            raise _not_found(draft_order_id)  # the id is another organisation's
    if started.run_id is None:  # a closed run exists and the push did not say force
        raise ProblemError(
            409, "run-closed", "The export has finished",
            f"the export of draft order {draft_order_id} has already run and closed; push again with "
            '"force": true to export it once more',
        )
    return PushAccepted(
        draft_order_id=draft_order_id, workflow_id=started.workflow_id, run_id=started.run_id,
        started_new=started.started_new, status_url=_status_url(request, draft_order_id),
    )


def _closed(draft_order_id: UUID, latest: ExportRecord | None) -> ProblemError:
    if latest is not None and latest.status == ExportStatus.ACKED:
        order = f" as ERP order {latest.erp_order_id}" if latest.erp_order_id else ""
        why = f"the export of draft order {draft_order_id} is ACKED{order}: there is nothing to retry"
    else:
        why = (
            f"the export of draft order {draft_order_id} is no longer running, so it cannot be retried; "
            'push it again with "force": true'
        )
    return _refused(why)


def _refused(why: str) -> ProblemError:
    return ProblemError(409, "retry-refused", "The export cannot be retried", why)


def _connection_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise _invalid("erp_connection_id", "must be a UUID") from None


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(422, "invalid-request", "The request is not valid", f"{field}: {message}",
                        field_errors=[(field, message)])


@router.post(
    "/{draft_order_id}/retry-push",
    status_code=202,
    response_model=RetryAccepted,
    summary="Start a new attempt of a FAILED export",
    description=(
        "Sends the workflow's `retry` update. Accepted only while the export is FAILED and waiting for a retry; "
        "otherwise 409 says why (still running, ACKED, run closed). The new attempt writes a new file."
    ),
    openapi_extra=json_body(RetryPushRequest),
    responses=responses(400, 401, 404, 409, 413, 415, 422, 503),
)
async def retry_push(
    request: Request,
    draft_order_id: DraftId,
    token: CurrentToken,
    ledger: LedgerDep,
    client: ClientDep,
    _json: Annotated[None, Depends(require_json)],
) -> RetryAccepted:
    body = await small_json(request, RetryPushRequest)
    run = await _find_run(client, ledger, draft_order_id)
    if run is None or run.org_id != token.org_id:
        raise _not_found(draft_order_id)
    if not run.running:
        raise _closed(draft_order_id, run.latest)
    try:
        attempt = await api.retry_export(
            client, draft_order_id, reason=body.reason, requested_by=f"api token {token.name} ({token.id})"
        )
    except api.RetryRejected as exc:
        raise _refused(exc.reason) from None
    except ExportNotFoundError:  # closed between the describe and the update
        raise _closed(draft_order_id, await run_in_threadpool(ledger.latest_export, draft_order_id)) from None
    return RetryAccepted(
        draft_order_id=draft_order_id, workflow_id=workflow_id_for(draft_order_id), attempt=attempt,
        status_url=_status_url(request, draft_order_id),
    )


@router.get(
    EXPORTS_PATH,
    name="draft_exports",
    response_model=DraftExports,
    summary="Every attempt of one draft's export (as `dropzone status --json`)",
    responses=responses(401, 404, 422, 503),
)
def draft_exports(draft_order_id: DraftId, token: CurrentToken, ledger: LedgerDep, settings: SettingsDep) -> Any:
    rows = ledger.draft_attempts(draft_order_id, org_id=token.org_id)
    if not rows:
        raise _not_found(draft_order_id)
    callbacks = [e for e in WebhookEvents(ledger).for_draft(draft_order_id) if e.org_id == token.org_id]
    return DraftExports(
        draft_order_id=draft_order_id, org_id=rows[0].org_id, attempts=[ExportAttempt.of(r, settings) for r in rows],
        webhook_events=callbacks,
    )


# Bodies the routes read themselves, and the problem body: the app adds them to the document.
DOCUMENTED_MODELS = (PushRequest, RetryPushRequest, Problem)
