"""Reading situation/reference rows (JSONL or CSV) with errors that name the file and line."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """A malformed data row; the message names the file and line."""


def iter_rows(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) from a .jsonl or .csv file; every row must hold ``required``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in required if k not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}:1: missing column(s) {missing}; found {reader.fieldnames}")
            for row in reader:
                yield reader.line_num, row
        return
    for lineno, row, err in _jsonl_records(path):
        if err is not None:
            raise DataError(err)
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {missing}")
        yield lineno, row


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line, row, None) per JSON-object line, or (line, None, message naming file:line) for a
    line that is not one, so callers choose to fail or skip; blank lines are passed over."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"{path}:{lineno}: not valid JSON ({exc.msg})"
                continue
            if not isinstance(row, dict):
                yield lineno, None, f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                continue
            yield lineno, row, None


def check_references(path, lineno: int, refs) -> list[str] | str:
    """References must be a non-empty string or list of non-empty strings."""
    if isinstance(refs, str) and refs.strip():
        return refs
    if isinstance(refs, list) and refs and all(isinstance(r, str) and r.strip() for r in refs):
        return refs
    raise DataError(f"{path}:{lineno}: 'references' must be a non-empty string or list of non-empty strings")


# ---- situations with reference perspectives (similarity-estimator step) ---------------------------


def _from_prompt_answer(row: dict) -> dict:
    """The CSV layout ``prompt,answer`` as a situation row: the situation is the prompt without the
    paper's instruction (so keywords come from the situation, as in the reward); the references are
    the answer's "In/From the perspective of X, ..." lines (inside <core perspectives> when the
    answer is tagged; a line without the opener, e.g. an intro, is dropped when others have it)."""
    from .config import situation_from_prompt
    from .text import OPENER_RE, split_perspectives, tag_gate

    answer = row["answer"]
    if isinstance(answer, str):
        passed, body = tag_gate(answer)
        segments = split_perspectives(body if passed else answer)
        with_opener = [seg for seg in segments if OPENER_RE.match(seg)]
        answer = with_opener or segments or answer
    prompt = row["prompt"]
    return {**row, "situation": situation_from_prompt(prompt) if isinstance(prompt, str) else prompt,
            "references": answer}


def _raw_situation_records(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line, row, None) per record, or (line, None, error message) for a record that cannot be
    parsed, so a caller can skip it and go on. A CSV without prompt/answer columns is a file-level
    error and always raises."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [k for k in ("prompt", "answer") if k not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}:1: missing column(s) {missing}; found {reader.fieldnames} "
                                "(a CSV of situations needs the columns prompt,answer)")
            for row in reader:
                if None in row or any(v is None for v in row.values()):  # too many / too few fields
                    yield reader.line_num, None, f"{path}:{reader.line_num}: wrong number of fields for header {reader.fieldnames}"
                else:
                    yield reader.line_num, _from_prompt_answer(row), None
        return
    for lineno, row, err in _jsonl_records(path):
        if row is not None and "situation" not in row and "prompt" in row and "answer" in row:
            row = _from_prompt_answer(row)  # the CSV layout as JSONL
        yield lineno, row, err


def _check_situation(path: Path, lineno: int, row: dict) -> dict:
    from .text import normalize_references

    missing = [k for k in ("situation", "references") if k not in row]
    if missing:
        raise DataError(f"{path}:{lineno}: missing field(s) {missing} (need 'situation' and 'references', "
                        "or 'prompt' and 'answer')")
    if not isinstance(row["situation"], str) or not row["situation"].strip():
        raise DataError(f"{path}:{lineno}: 'situation' must be a non-empty string")
    refs = normalize_references(check_references(path, lineno, row["references"]))
    if not refs:
        raise DataError(f"{path}:{lineno}: no reference perspective found in 'references'")
    return {**row, "situation": row["situation"].strip(), "references": refs}


def iter_situations(path: str | Path, on_error: str = "fail", warn=None) -> Iterator[tuple[int, dict]]:
    """Yield (line, row) for situations with reference perspectives, from either layout:

    * JSONL rows ``{"situation": str, "references": [str, ...] | "\\n"-joined str, ...}`` (other
      fields such as ``id`` or ``response`` are kept);
    * CSV with columns ``prompt,answer`` where ``answer`` holds one "In the perspective of X, ..."
      line per perspective (also accepted as JSONL fields ``prompt``/``answer``).

    ``row["references"]`` comes back as a list split per perspective (``normalize_references``).
    A malformed record raises :class:`DataError` naming file:line (``on_error="fail"``) or is
    reported through ``warn`` (default: a line on stderr) and skipped (``on_error="skip"``).
    """
    import sys

    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    for lineno, row, err in _raw_situation_records(path):
        if err is None:
            try:
                row = _check_situation(path, lineno, row)
            except (DataError, ValueError) as exc:
                err = str(exc) if str(exc).startswith(f"{path}:") else f"{path}:{lineno}: {exc}"
        if err is not None:
            if on_error == "fail":
                raise DataError(err)
            warn(f"warning: {err} (skipped)")
            continue
        yield lineno, row
