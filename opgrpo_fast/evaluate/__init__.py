"""Overton evaluation harness: generate answers, then score them the way OP-GRPO's claims are
measured.

    python -m opgrpo_fast.evaluate --model PATH --data FILE --out DIR          # generate + score
    python -m opgrpo_fast.evaluate --responses FILE --data FILE --out DIR      # re-score only
    python -m opgrpo_fast.evaluate.compare DIR... --out compare.png           # chart across runs

Modules: :mod:`.generate` (batched sampling, tag-gated retries, incremental JSONL),
:mod:`.nli` (the Modular Pluralism NLI protocol), :mod:`.coverage` (similarity coverage with the
reward's estimator), :mod:`.judge` (OpenAI-compatible LLM judge), :mod:`.report`
(results.json / results.md), :mod:`.compare` (PNG across runs).

This module only reads the evaluation items (no torch import).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data_io import DataError, check_references, iter_rows
from ..text import normalize_references


@dataclass(frozen=True)
class EvalItem:
    """One situation with its reference perspectives ("In the perspective of X, …" segments)."""

    id: str
    situation: str
    references: tuple[str, ...]


def _csv_list(value):
    # A CSV cell holds either newline-joined references or a JSON list written by a script.
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return parsed if isinstance(parsed, list) else value
    return value


def load_items(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    """Rows ``{"situation", "references"[, "id"]}`` from JSONL or CSV. Missing columns, empty
    references, an empty situation or a repeated id raise :class:`DataError` naming file:line.
    Items without an ``id`` get ``"<file name>:<line>"``."""
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_rows(path, required=("situation", "references")):
        refs = check_references(path, lineno, _csv_list(row["references"]))
        situation = row["situation"]
        if not isinstance(situation, str) or not situation.strip():
            raise DataError(f"{path}:{lineno}: 'situation' must be a non-empty string")
        item_id = str(row.get("id") or f"{Path(path).name}:{lineno}")
        if item_id in seen:
            raise DataError(f"{path}:{lineno}: id {item_id!r} already used on line {seen[item_id]}")
        seen[item_id] = lineno
        items.append(EvalItem(item_id, situation.strip(), tuple(normalize_references(refs))))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{path}: no evaluation rows")
    return items


__all__ = ["EvalItem", "load_items", "DataError"]
