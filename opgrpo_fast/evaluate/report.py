"""Run reports: results.json (everything), results.md (a table), scores.jsonl (per item).

``results["metrics"]`` is a flat {name: number | None} view that the markdown table and the
comparison chart read, so both always show the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .judge import ASPECTS

# (metric key, table label, format); rates are shown as percentages
METRICS: list[tuple[str, str, str]] = [
    ("nli_accuracy", "NLI accuracy (score > 0.33)", "pct"),
    ("nli_mean", "NLI mean score", "num"),
    ("nli_std", "NLI score std", "num"),
    ("nli_stderr", "NLI score std. error", "num"),
    ("relative_matching", "Relative matching acc. (@0.7)", "pct"),
    ("absolute_matching", "Absolute matching acc. (@0.7)", "pct"),
    ("uniqueness_rate", "Uniqueness rate", "pct"),
    ("format_pass_rate", "Format pass rate", "pct"),
    ("reward", "Mean reward", "num"),
    ("mean_tokens", "Mean tokens", "int"),
    ("judge_overall", "Judge overall (1-5)", "num"),
    *[(f"judge_{a}", f"Judge {a} (1-5)", "num") for a in ASPECTS],
]


def flat_metrics(results: dict) -> dict[str, float | None]:
    """The headline numbers of a results dict (sections that were skipped give None)."""
    nli, cov, judge = results.get("nli") or {}, results.get("coverage") or {}, results.get("judge") or {}
    m: dict[str, float | None] = {
        "nli_accuracy": nli.get("accuracy"), "nli_mean": nli.get("mean"), "nli_std": nli.get("std"),
        "nli_stderr": nli.get("stderr"),
    }
    for k in ("relative_matching", "absolute_matching", "uniqueness_rate", "format_pass_rate", "reward", "mean_tokens"):
        m[k] = cov.get(k)
    m["judge_overall"] = judge.get("overall")
    for a in ASPECTS:
        m[f"judge_{a}"] = (judge.get("aspects") or {}).get(a)
    return m


def _fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{value:.0f}"
    return f"{value:.3f}"


def markdown_table(runs: Sequence[tuple[str, dict]]) -> str:
    """Metrics as rows, runs as columns; rows where every run is None are left out."""
    rows = [(k, label, kind) for k, label, kind in METRICS if any(m.get(k) is not None for _, m in runs)]
    head = "| metric | " + " | ".join(name.replace("|", "/") for name, _ in runs) + " |"
    sep = "|---|" + "---:|" * len(runs)
    body = ["| " + label + " | " + " | ".join(_fmt(m.get(k), kind) for _, m in runs) + " |" for k, label, kind in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_report(out_dir: str | Path, results: dict, per_item: Sequence[dict]) -> Path:
    """Write results.json, results.md and scores.jsonl under ``out_dir``; returns results.json's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results, metrics=flat_metrics(results))
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    run = results.get("run", {})
    name = run.get("name", out.name)
    lines = [f"# Overton evaluation: {name}", "",
             f"model `{run.get('model')}` · prompt style `{run.get('prompt_style')}` · {run.get('n_items')} items "
             f"from `{run.get('data')}`", ""]
    for section in ("nli", "coverage", "judge"):
        if (results.get(section) or {}).get("skipped"):
            lines.append(f"{section}: skipped ({results[section]['skipped']})")
    lines += ["", markdown_table([(name, results["metrics"])])]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    with (out / "scores.jsonl").open("w", encoding="utf-8") as f:
        for row in per_item:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
