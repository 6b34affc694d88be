"""The similarity-estimator step end to end on the bundled demo set, offline, on CPU.

    python -m opgrpo_fast.similarity.demo --out DIR [--base MODEL] [--max-steps 8]

1. build triplets from ``data/demo_situations.jsonl`` (30 situations) with the heuristic judge;
2. fine-tune the base encoder for a few steps on them plus the 60 hand-written triplets of
   ``data/demo_triplets.jsonl`` (other situations; anchor/positive written as one perspective in
   two wordings, the negative as another perspective on the same situation);
3. evaluate base vs fine-tuned on the held-out triplets and the demo situations; print the table.

A few steps at the paper's learning rate move the numbers only a little: this shows the
pipeline, not a trained estimator (see bench/estimator_check.py for a real-data run).
"""
from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

from . import build_triplets, evaluate, train
from .common import cli_errors, load_model
from .judges import HeuristicJudge


def data_file(name: str) -> Path:
    return Path(str(resources.files("opgrpo_fast").joinpath(f"data/{name}")))


def run_demo(out: str | Path, base=None, max_steps: int = 8, batch_size: int = 16, lr: float = train.DEFAULTS["lr"],
             seed: int = 0, progress: bool = True) -> dict:
    """Build -> train -> evaluate into ``out``; returns the evaluation report (plus timings)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.perf_counter()
    encoder = load_model(base)
    built = out / "triplets.jsonl"
    for stale in (built, build_triplets.rejected_path(built)):  # a demo builds afresh (the builder would resume)
        stale.unlink(missing_ok=True)
    stats = build_triplets.run(data_file("demo_situations.jsonl"), built, HeuristicJudge(), encoder, progress=progress)
    times["build_s"] = time.perf_counter() - t0
    rows = train.load_triplets(built) if built.stat().st_size else []
    rows += train.load_triplets(data_file("demo_triplets.jsonl"))
    t1 = time.perf_counter()
    summary = train.train(rows, base, out / "model", max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                          logging_steps=1, progress=progress)
    times["train_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    report = evaluate.evaluate({"base": encoder, "fine-tuned": str(out / "model")}, out / "model" / "eval_triplets.jsonl",
                               data_file("demo_situations.jsonl"), out / "report", seed=seed)
    times["evaluate_s"] = time.perf_counter() - t2
    report["demo"] = {"built_triplets": stats["written"], "train_triplets": summary["n_train"],
                      "steps": summary["steps"], "eval_loss_before": summary["eval_before"].get("eval_loss"),
                      "eval_loss_after": summary["eval_after"].get("eval_loss"),
                      **{k: round(v, 2) for k, v in times.items()}}
    (out / "report" / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m opgrpo_fast.similarity.demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (triplets, model, report)")
    ap.add_argument("--base", default=None, help="base encoder (default: offline all-MiniLM-L6-v2)")
    ap.add_argument("--max-steps", type=int, default=8, help="training steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=train.DEFAULTS["lr"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = run_demo(args.out, args.base, args.max_steps, args.batch_size, args.lr, args.seed)
    d = report["demo"]
    print(f"\nbuilt {d['built_triplets']} triplets from the demo situations ({d['build_s']} s); trained {d['steps']} steps "
          f"on {d['train_triplets']} triplets ({d['train_s']} s; held-out loss {d['eval_loss_before']:.3f} -> "
          f"{d['eval_loss_after']:.3f}); "
          f"evaluated in {d['evaluate_s']} s\n")
    print(report["markdown"])
    print(f"\nmodel: {Path(args.out) / 'model'}  ->  OvertonReward(encoder='{Path(args.out) / 'model'}')")
    return report


if __name__ == "__main__":
    with cli_errors():
        main()
