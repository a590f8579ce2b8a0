"""The ERP's check of an ``orderflow_export_json_v1`` file, by streaming: any size, bounded memory.

What a careful ERP checks: UTF-8 JSON; exactly the keys of ``ExportV1``, in
their order, at every level (the fields of ``ExportV1`` and its nested
models); every value as ``ExportV1`` types it. It goes through the drafts'
own pipeline (dropzone/export_v1/pipeline.py): msgspec splits the document into raw
spans of the buffer, the head is validated by ``ExportV1`` without its lines,
the lines by the same ``DraftLine`` models a batch at a time, so a
600,000-line export costs its bytes plus one small object per line, never a
model per line. Only the first ``MAX_KEPT_PROBLEMS`` problems are kept (a
broken export of a million lines would otherwise answer with megabytes).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import BaseModel, TypeAdapter, ValidationError

from dropzone.export_v1 import (
    LINE_BATCH,
    Buffer,
    DraftLine,
    ExportV1,
    check_lines,
    model_without_lines,
    split_document,
    split_items,
    validation_problems,
)

MAX_KEPT_PROBLEMS = 50

_HEAD = model_without_lines(ExportV1)
_LINE_LIST = TypeAdapter(list[DraftLine])  # only for a ``lines`` value that is not an array
_ANY = msgspec.json.Decoder()
_KEY = msgspec.json.Encoder()
_LINE_KEYS = tuple(DraftLine.model_fields)


@dataclass
class ExportCheck:
    """The document's head (``lines`` left empty) when valid, else the first problems and their count."""

    document: ExportV1 | None = None
    line_count: int = 0
    problems: list[str] = field(default_factory=list)
    total: int = 0

    def add(self, problems: list[str]) -> None:
        self.total += len(problems)
        room = MAX_KEPT_PROBLEMS - len(self.problems)
        if room > 0:
            self.problems += problems[:room]


def check_export(body: Buffer, *, batch_lines: int = LINE_BATCH) -> ExportCheck:
    result = ExportCheck()
    try:
        top = split_document(body)
    except msgspec.ValidationError:
        result.add(["(document): must be a JSON object"])
        return result
    except msgspec.DecodeError:
        result.add(["not UTF-8 JSON"])
        return result
    try:
        # Every key in its place; the lines' own keys are checked a batch at a time below.
        shape = {key: [] if key == "lines" else _ANY.decode(raw) for key, raw in top.items()}
    except msgspec.DecodeError:  # a span msgspec skipped over but cannot decode (not UTF-8)
        result.add(["not UTF-8 JSON"])
        return result
    result.add(key_problems(shape, ExportV1, ""))
    document = _check_head(top, result)
    _check_lines(top.get("lines"), result, batch_lines)
    if result.total == 0 and document is not None:
        result.document = document
    return result


def _check_head(top: dict[str, msgspec.Raw], result: ExportCheck) -> ExportV1 | None:
    doc = b"{" + b",".join(_KEY.encode(k) + b":" + bytes(v) for k, v in top.items() if k != "lines") + b"}"
    try:
        head = _HEAD.model_validate_json(doc)
    except ValidationError as exc:
        result.add([f"{path}: {reason}" for path, reason in validation_problems(exc)])
        return None
    values = {name: getattr(head, name) for name in _HEAD.model_fields}
    return ExportV1.model_construct(**values, lines=[])


def _check_lines(raw: msgspec.Raw | None, result: ExportCheck, batch_lines: int) -> None:
    if raw is None:
        return  # reported as a missing key
    items = split_items(raw)
    if items is None:
        try:
            _LINE_LIST.validate_json(bytes(raw))
        except ValidationError as exc:
            result.add([f"{path}: {reason}" for path, reason in validation_problems(exc, within=("lines",))])
        return
    result.line_count = len(items)
    for start in range(0, len(items), batch_lines):
        batch = items[start : start + batch_lines]
        try:
            decoded = _ANY.decode(b"[" + b",".join(batch) + b"]")
        except msgspec.DecodeError:
            result.add([f"lines[{start}:{start + len(batch)}]: not UTF-8 JSON"])
            continue
        for offset, item in enumerate(decoded):
            if type(item) is not dict or tuple(item) != _LINE_KEYS:  # cold path
                result.add(key_problems(item, DraftLine, f"lines[{start + offset}]"))
        _, problems = check_lines(start, batch)
        result.add([f"{path}: {reason}" for path, reason in problems])


def key_problems(data: Any, model: type[BaseModel], path: str) -> list[str]:
    """Exactly the model's keys, in its field order, at every level."""
    if not isinstance(data, dict):
        return []  # the model reports the wrong type
    where = path or "(document)"
    expected = list(model.model_fields)
    problems = []
    unexpected = [key for key in data if key not in model.model_fields]
    missing = [key for key in expected if key not in data]
    if unexpected:
        problems.append(f"{where}: unexpected key(s) {', '.join(repr(k[:40]) for k in unexpected[:5])}")
    if missing:
        problems.append(f"{where}: missing key(s) {', '.join(missing)}")
    if [key for key in data if key in model.model_fields] != [key for key in expected if key in data]:
        problems.append(f"{where}: keys out of order (expected {', '.join(expected)})")
    for name, info in model.model_fields.items():
        sub, is_list = _nested_model(info.annotation)
        if sub is None or name not in data:
            continue
        child = f"{path}.{name}" if path else name
        value = data[name]
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                problems += key_problems(item, sub, f"{child}[{i}]")
        elif not is_list:
            problems += key_problems(value, sub, child)
    return problems


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model, is a list of it) for ``M``, ``M | None`` and ``list[M]`` annotations."""
    origin = typing.get_origin(annotation)
    if origin is list:
        inner, _ = _nested_model(typing.get_args(annotation)[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found, is_list = _nested_model(arg)
            if found is not None:
                return found, is_list
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False
