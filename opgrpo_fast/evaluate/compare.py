"""Compare evaluation runs: one PNG (grouped bars) and one markdown table.

    python -m opgrpo_fast.evaluate.compare runs/eval_base runs/eval_opgrpo --out compare.png [--md compare.md]

Each DIR holds a results.json written by ``python -m opgrpo_fast.evaluate``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .judge import ASPECTS
from .report import flat_metrics, markdown_table

# Panel 1: shares in [0, 1]; the NLI mean gets its standard error as an error bar.
RATE_METRICS = [("nli_accuracy", "NLI acc."), ("nli_mean", "NLI mean"), ("relative_matching", "Rel. match"),
                ("absolute_matching", "Abs. match"), ("uniqueness_rate", "Uniqueness"),
                ("format_pass_rate", "Format pass")]
# Panel 2 (only when some run was judged): 1-5 scores.
JUDGE_METRICS = [("judge_overall", "Overall"), *[(f"judge_{a}", a.capitalize()) for a in ASPECTS]]


def load_runs(dirs: Sequence[str | Path]) -> list[tuple[str, dict]]:
    """(run name, flat metrics) per directory; a missing results.json is a clear error."""
    runs = []
    for d in dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run python -m opgrpo_fast.evaluate --out {d} first)")
        results = json.loads(path.read_text(encoding="utf-8"))
        name = (results.get("run") or {}).get("name") or Path(d).name
        runs.append((name, results.get("metrics") or flat_metrics(results)))
    return runs


def _bars(ax, runs, metrics, err_key=None, fmt="{:.2f}"):
    """Grouped bars, one group per metric, one colour per run; unmeasured values are marked n/a.
    ``err_key`` draws that run's standard error on its NLI-mean bar only."""
    import numpy as np

    x = np.arange(len(metrics))
    width = 0.8 / len(runs)
    for r, (name, m) in enumerate(runs):
        pos = x + (r - (len(runs) - 1) / 2) * width
        vals = [m.get(k) for k, _ in metrics]
        bars = ax.bar(pos, [0.0 if v is None else v for v in vals], width, label=name)
        ax.bar_label(bars, labels=["n/a" if v is None else fmt.format(v) for v in vals], fontsize=6, padding=1)
        if err_key and m.get(err_key) is not None:
            keys = [k for k, _ in metrics]
            if "nli_mean" in keys and m.get("nli_mean") is not None:
                i = keys.index("nli_mean")
                ax.errorbar(pos[i], m["nli_mean"], yerr=m[err_key], color="black", capsize=3, lw=1)
    ax.set_xticks(x, [label for _, label in metrics], fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot(runs: list[tuple[str, dict]], out: str | Path) -> Path:
    """Write the comparison PNG (matplotlib Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = any(m.get("judge_overall") is not None for _, m in runs)
    fig, axes = plt.subplots(1, 2 if judged else 1, figsize=(14 if judged else 8, 5), squeeze=False)
    ax = axes[0, 0]
    _bars(ax, runs, RATE_METRICS, err_key="nli_stderr")
    ax.set_ylim(0, 1.1)
    ax.set_title("Overton coverage (higher is better; NLI mean ± s.e.)")
    if judged:
        ax2 = axes[0, 1]
        _bars(ax2, runs, JUDGE_METRICS)
        ax2.set_ylim(0, 5.5)
        ax2.set_title("LLM judge (1-5)")
    # one legend under the panels, so it never hides a bar
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(runs) - 1) // 4), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="evaluation output directories (each with results.json)")
    ap.add_argument("--out", default="compare.png", help="PNG to write")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    try:
        runs = load_runs(args.dirs)
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(runs)
    print(table)
    if args.md:
        Path(args.md).write_text(table, encoding="utf-8")
    print(f"wrote {plot(runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
