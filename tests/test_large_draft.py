"""The one draft pipeline: every draft validated and rendered a batch of lines at a time.

The batched path must be indistinguishable from ``validate_draft`` +
``render_export``: the same bytes for valid drafts, the same problems (same
fields, same order, same words) for invalid ones, whether the draft is a dict
or JSON bytes, small or large, and through the activity with real SeaweedFS
and PostgreSQL (a ``draft_ref``) the same stored object.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.exceptions import ApplicationError

from activities.exports import ExportActivities
from dropzone.connectors import default_registry
from dropzone.contracts import DraftRef, OpenAttemptInput, RenderInput
from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import render_export, stream_validated_export, validate_draft
from dropzone.export_v1.pipeline import JITER_WORDS_UP_TO
from tests.dropzone.test_export_v1 import drafts, example, with_lines
from tests.helpers import make_draft, sha256_of

Mutation = Callable[[dict[str, Any]], None]


def inline_outcome(raw: bytes) -> tuple[str, Any, Any]:
    try:
        return ("ok", render_export(validate_draft(raw)), None)
    except InvalidDraftError as exc:
        return ("invalid", exc.message, exc.fields)


def streamed_outcome(raw: bytes | dict[str, Any], batch_lines: int) -> tuple[str, Any, Any]:
    pieces: list[bytes] = []
    try:
        head = stream_validated_export(raw, pieces.append, batch_lines=batch_lines)
    except InvalidDraftError as exc:
        return ("invalid", exc.message, exc.fields)
    assert head.line_count == len((raw if isinstance(raw, dict) else json.loads(raw))["lines"])
    return ("ok", b"".join(pieces), None)


def big_draft(lines: int = 30) -> dict[str, Any]:
    return make_draft(org_id=uuid.uuid4(), lines=lines)


def _set(path: str, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(key: str) -> Mutation:
    return lambda d: d.pop(key)


MUTATIONS: dict[str, list[Mutation]] = {
    "valid": [],
    "lines first, keys reordered": [lambda d: d.update(dict(reversed(list(d.items()))))],
    "extra keys": [_set("future", {"x": [1, 2]}), _set("lines.4.margin", 0.3)],
    "line number above 64 bits": [_set("lines.29.line_no", 2**64)],  # valid: line numbers have no upper bound
    "one bad line": [_set("lines.3.qty", -1)],
    "duplicate line numbers only": [_set("lines.3.line_no", 1), _set("lines.20.line_no", 3)],
    "duplicate and bad line": [_set("lines.3.line_no", 1), _set("lines.7.qty", "x")],
    "duplicate and bad source document": [_set("lines.3.line_no", 1), _set("source_document.sha256", "zz")],
    "everything at once": [
        _set("org_slug", " "),
        _set("lines.3.line_no", 1),
        _set("lines.9.uom", ""),
        _set("lines.29.currency", "eur"),
        _set("source_document.sha256", "zz"),
    ],
    "lines empty": [_set("lines", [])],
    "lines missing": [_delete("lines")],
    "lines not an array": [_set("lines", "abc"), _set("header.currency", "XXX")],
    "line not an object": [_set("lines.2", 5)],
    "line missing fields": [_set("lines.2", {"line_no": 4})],
    "bad types": [_set("approved_at", 123), _set("lines.4.unit_price", -0.5), _set("lines.5.qty", True)],
}


@pytest.mark.parametrize("batch_lines", [1, 7, 2000])
@pytest.mark.parametrize("case", list(MUTATIONS))
def test_batched_path_equals_whole_document_path(case: str, batch_lines: int) -> None:
    draft = big_draft()
    for mutate in MUTATIONS[case]:
        mutate(draft)
    raw = json.dumps(draft).encode()
    expected = inline_outcome(raw)
    assert streamed_outcome(raw, batch_lines) == expected
    assert streamed_outcome(draft, batch_lines) == expected  # decoded JSON (an inline draft): the same stages
    valid = ("valid", "lines first, keys reordered", "extra keys", "line number above 64 bits")
    assert expected[0] == ("ok" if case in valid else "invalid")


@pytest.mark.parametrize("raw", [b"[1, 2]", b"null", b'"text"', b"{", b"", b'{"lines": [1,}'])
def test_document_level_problems_name_the_document(raw: bytes) -> None:
    with pytest.raises(InvalidDraftError) as info:
        stream_validated_export(raw, lambda _: None)
    assert info.value.fields == ["(document)"]
    # A small draft is named in the same words at every size of batch (jiter's, for malformed JSON).
    assert info.value.message == inline_outcome(raw)[1]


def test_huge_failure_is_capped_like_the_whole_document_path() -> None:
    draft = big_draft(5000)
    for line in draft["lines"]:
        line["qty"] = -1
    raw = json.dumps(draft).encode()
    assert streamed_outcome(raw, 2000) == inline_outcome(raw)


def test_nothing_is_written_after_the_first_problem() -> None:
    draft = big_draft(50)
    draft["lines"][30]["qty"] = 0
    pieces: list[bytes] = []
    with pytest.raises(InvalidDraftError):
        stream_validated_export(json.dumps(draft).encode(), pieces.append, batch_lines=10)
    # head + the three valid batches before the bad one; never the tail.
    assert len(pieces) == 4 and not pieces[-1].endswith(b"}\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=drafts(), batch=st.integers(min_value=1, max_value=5))
def test_same_bytes_property(data: dict[str, Any], batch: int) -> None:
    raw = json.dumps(data, ensure_ascii=False).encode()
    assert streamed_outcome(raw, batch) == inline_outcome(raw)


# ---------------------------------------------------------------- every form, every size


def streamed(data: Any, batch_lines: int = 7) -> bytes:
    pieces: list[bytes] = []
    stream_validated_export(data, pieces.append, batch_lines=batch_lines)
    return b"".join(pieces)


def test_every_form_of_a_draft_goes_through_the_same_pipeline() -> None:
    data = with_lines(250)
    raw = json.dumps(data).encode()
    expected = render_export(validate_draft(data))
    for form in (raw, raw.decode(), bytearray(raw), memoryview(raw)):
        assert render_export(validate_draft(form)) == expected
        assert streamed(form) == expected
    assert streamed(copy.deepcopy(data)) == expected  # the worker's inline draft: a dict
    assert stream_validated_export(data).line_count == 250


def _small(mutate: Any) -> bytes:
    data = example()
    mutate(data)
    return json.dumps(data).encode()


def _planted(old: bytes, new: bytes) -> Any:
    return lambda: json.dumps(example(), ensure_ascii=False).encode().replace(old, new)


@pytest.mark.parametrize(
    ("make", "outcome"),
    [
        # jiter reads NaN and Infinity as numbers, msgspec refuses them: jiter decides.
        (lambda: _small(lambda d: d.update(future=float("nan"))), "ok"),
        (lambda: _small(lambda d: d["lines"][1].update(qty=float("inf"))), "invalid draft: lines[1].qty: must be a finite number"),
        # msgspec skips over a span it does not decode; the place is the document's, in jiter's words.
        (
            _planted(b'"INT-1001"', b'"SKU-\xff"'),
            "invalid draft: (document): invalid JSON: invalid unicode code point at line 1 column 697",
        ),
        (
            lambda: _small(lambda d: d["lines"][1].update(description="@")).replace(b'"@"', b"[" * 250 + b"]" * 250),
            "invalid draft: (document): invalid JSON: recursion limit exceeded at line 1 column 1005",
        ),
        (lambda: b"[" * 300 + b"]" * 300, "invalid draft: (document): invalid JSON: recursion limit exceeded at line 1 column 202"),
    ],
)
def test_a_small_draft_is_read_as_jiter_reads_a_whole_document(make: Any, outcome: str) -> None:
    raw = make()
    assert len(raw) <= JITER_WORDS_UP_TO
    for run in (lambda: render_export(validate_draft(raw)), lambda: streamed(raw)):
        if outcome == "ok":
            assert run() == render_export(validate_draft(json.loads(raw)))
        else:
            with pytest.raises(InvalidDraftError) as info:
                run()
            assert info.value.message == outcome


def test_a_large_draft_that_is_not_json_is_named_by_its_byte() -> None:
    raw = json.dumps(with_lines(9000)).encode()[:-100]
    assert len(raw) > JITER_WORDS_UP_TO  # never decoded whole
    expected = f"invalid draft: (document): invalid JSON: Input data was truncated at line 1 column {len(raw) + 1} (byte {len(raw)})"
    for run in (lambda: validate_draft(raw), lambda: streamed(raw)):
        with pytest.raises(InvalidDraftError) as info:
            run()
        assert info.value.message == expected


# ---------------------------------------------------------------- through the activity


def _activities(ledger, object_store) -> ExportActivities:  # type: ignore[no-untyped-def]
    return ExportActivities(ledger, object_store, default_registry())


def _open(acts: ExportActivities, target, draft: dict[str, Any]):  # type: ignore[no-untyped-def]
    return acts.open_attempt(
        OpenAttemptInput(
            erp_connection_id=target.connection_id,
            draft_order_id=uuid.UUID(draft["draft_order_id"]),
            org_id=target.org_id,
            workflow_id=f"wf-{draft['draft_order_id']}",
            workflow_run_id=uuid.uuid4().hex,
            run_seq=1,
        )
    )


def _store_draft(object_store, draft: dict[str, Any]) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    raw = json.dumps(draft, separators=(",", ":")).encode()
    key = f"drafts/{draft['org_id']}/{draft['draft_order_id']}/draft.json"
    object_store.put(key, raw, sha256=sha256_of(raw), size=len(raw))
    return key, raw


def test_draft_ref_export_stores_the_same_bytes(fs_target, ledger, object_store) -> None:  # type: ignore[no-untyped-def]
    # 120,000 lines: ~19 MB of draft, ~28 MB of export, stored as a multipart upload.
    draft = make_draft(org_id=fs_target.org_id, lines=120_000)
    draft = dict(reversed(list(draft.items())))  # lines before the header fields
    key, raw = _store_draft(object_store, draft)
    expected = render_export(validate_draft(raw))
    acts = _activities(ledger, object_store)

    summary = acts.inspect_draft(DraftRef(draft_ref=key))
    assert summary.line_count == 120_000 and str(summary.draft_order_id) == draft["draft_order_id"]

    attempt = _open(acts, fs_target, draft)
    stored = acts.render_and_store(RenderInput(export_id=attempt.export_id, draft_ref=key))
    assert stored.size_bytes == len(expected) and stored.sha256 == sha256_of(expected)
    assert b"".join(object_store.iter_chunks(stored.storage_key)) == expected
    row = ledger.get_export(attempt.export_id)
    assert (row.sha256, row.size_bytes) == (stored.sha256, stored.size_bytes)
    # Idempotent: a second execution finds the same object and stores nothing new.
    assert acts.render_and_store(RenderInput(export_id=attempt.export_id, draft_ref=key)) == stored


def test_invalid_draft_ref_names_every_field_and_stores_nothing(fs_target, ledger, object_store) -> None:  # type: ignore[no-untyped-def]
    draft = make_draft(org_id=fs_target.org_id, lines=5000)
    bad = copy.deepcopy(draft)
    bad["lines"][4321]["qty"] = -2
    bad["lines"][17]["line_no"] = 1
    bad["header"]["currency"] = "XYZ"
    key, raw = _store_draft(object_store, bad)
    acts = _activities(ledger, object_store)
    attempt = _open(acts, fs_target, draft)
    with pytest.raises(ApplicationError) as info:
        acts.render_and_store(RenderInput(export_id=attempt.export_id, draft_ref=key))
    assert info.value.type == "INVALID_DRAFT" and info.value.non_retryable
    assert info.value.details[0]["fields"] == ["header.currency", "lines[4321].qty", "lines[17].line_no"]
    assert info.value.message == inline_outcome(raw)[1]
    assert object_store.head(attempt.storage_key) is None
    with pytest.raises(ApplicationError):
        acts.inspect_draft(DraftRef(draft_ref=key))
