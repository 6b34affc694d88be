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
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {missing}")
            yield lineno, row


def check_references(path, lineno: int, refs) -> list[str] | str:
    """References must be a non-empty string or list of non-empty strings."""
    if isinstance(refs, str) and refs.strip():
        return refs
    if isinstance(refs, list) and refs and all(isinstance(r, str) and r.strip() for r in refs):
        return refs
    raise DataError(f"{path}:{lineno}: 'references' must be a non-empty string or list of non-empty strings")
