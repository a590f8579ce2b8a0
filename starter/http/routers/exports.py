"""``GET /exports``: the organisation's export attempts, newest first, a page at a time (as `dropzone list`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from dropzone.errors import InvalidConfigError
from starter.cli.common import parse_since
from starter.http.deps import CurrentToken, LedgerDep, SettingsDep
from starter.http.problems import ProblemError, responses
from starter.http.schemas import ExportAttempt, ExportFilters, ExportPage, ExportStatusName

router = APIRouter(tags=["exports"])


@router.get(
    "/exports",
    response_model=ExportPage,
    summary="Export attempts of the token's organisation (as `dropzone list --json`)",
    responses=responses(401, 422, 503),
)
def list_exports(
    token: CurrentToken,
    ledger: LedgerDep,
    settings: SettingsDep,
    status: Annotated[ExportStatusName | None, Query(description="Only attempts in this status.")] = None,
    since: Annotated[
        str | None, Query(description="Created since: `30m`, `2h`, `7d`, or an ISO date/time (UTC unless it says).")
    ] = None,
    page: Annotated[int, Query(ge=1, description="1 = newest.")] = 1,
    limit: Annotated[int, Query(ge=1, le=1000, description="Attempts per page.")] = 50,
) -> Any:
    try:
        since_at = parse_since(since, option="since") if since is not None else None
    except InvalidConfigError as exc:
        raise ProblemError(422, "invalid-request", "The request is not valid", exc.message,
                           field_errors=[("since", exc.message.removeprefix(f"since {since!r}: "))]) from None
    # One row more than asked tells whether another page exists.
    rows = ledger.list_exports(
        org_id=token.org_id, status=status, since=since_at, limit=limit + 1, offset=(page - 1) * limit
    )
    return ExportPage(
        page=page, limit=limit, has_more=len(rows) > limit,
        filters=ExportFilters(org_id=token.org_id, status=status, since=since_at),
        exports=[ExportAttempt.of(r, settings) for r in rows[:limit]],
    )
