"""Real-data check of the similarity-estimator step on ValuePrism (dev, 1,200 situations).

    python bench/estimator_check.py --out bench/results/estimator [--data ../shared/data/valueprism_dev.jsonl]

1. split the situations (seeded) into train / held-out;
2. build triplets from the train split with the heuristic judge; train all-MiniLM-L6-v2 (the
   paper's settings: batch 32, lr 2.1457e-5, warmup 0.0325, scale 70; 2 epochs);
3. evaluate base vs fine-tuned on the held-out situations (``opgrpo_fast.similarity.evaluate``),
   plus the 60 hand-written demo triplets, with paired bootstrap 95% intervals of each change.

Held-out triplets built by the same heuristic are reported but are *not* a fair test: their
positives passed a base-model cosine filter and their negatives are less base-similar by
construction, so the base model scores ~100% on them. The ``name`` / ``sentence`` triplets and
the matching metrics with their controls are built without any model choosing what is tested.

ValuePrism (AI2 ImpACT licence) is read at run time only: everything that holds its text (splits,
triplets, the model) lives in ``--work`` (default: a temporary folder outside the repository) and
``--out`` gets numbers only. Without the data file the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from opgrpo_fast.data_io import iter_situations
from opgrpo_fast.similarity import build_triplets, evaluate, train
from opgrpo_fast.similarity.common import load_model
from opgrpo_fast.similarity.demo import data_file
from opgrpo_fast.similarity.judges import HeuristicJudge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "valueprism_dev.jsonl"


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mean(b) - mean(a) over items resampled with replacement (paired)."""
    diff = b.double() - a.double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diff), (n_boot, len(diff)), generator=g)
    means = diff[idx].mean(dim=1)
    return [float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/estimator", help="folder for the numbers (JSON + markdown)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ValuePrism situations JSONL")
    ap.add_argument("--work", default=None, help="scratch folder for splits / triplets / model (default: a temp dir)")
    ap.add_argument("--heldout", type=float, default=0.25, help="held-out share of the situations")
    ap.add_argument("--epochs", type=float, default=train.DEFAULTS["epochs"])
    ap.add_argument("--lr", type=float, default=train.DEFAULTS["lr"])
    ap.add_argument("--name", default="estimator_check", help="stem of the result files in --out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use only N situations (smoke runs)")
    ap.add_argument("--reuse", action="store_true", help="keep triplets / model already in --work (re-evaluate only)")
    args = ap.parse_args(argv)

    if not Path(args.data).exists():
        print(f"skipped: {args.data} not found (ValuePrism is read at run time only, never bundled)")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="estimator_check_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    rows, seen = [], set()
    for _, row in iter_situations(args.data):
        if row["situation"] not in seen:
            seen.add(row["situation"])
            rows.append({"situation": row["situation"], "references": row["references"]})
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.limit] if args.limit else rows
    n_held = round(args.heldout * len(rows))
    held, trn = rows[:n_held], rows[n_held:]
    write_jsonl(work / "train_situations.jsonl", trn)
    write_jsonl(work / "heldout_situations.jsonl", held)

    base = load_model(None)
    judge = HeuristicJudge()
    timings = {"reused_work": bool(args.reuse)}  # reused: build/train times are those of the earlier run or ~0
    for split in ("train", "heldout"):
        t = time.perf_counter()
        path = work / f"{split}_triplets.jsonl"
        if not args.reuse:
            for p in (path, build_triplets.rejected_path(path)):
                p.unlink(missing_ok=True)
        build_triplets.run(work / f"{split}_situations.jsonl", path, judge, base)  # resumes when reused
        timings[f"build_{split}_s"] = round(time.perf_counter() - t, 1)
        n_sit = len(trn if split == "train" else held)
        print(f"{split}: {len(path.read_text().splitlines())} triplets from {n_sit} situations", flush=True)

    model_dir = work / f"model_e{args.epochs:g}_lr{args.lr:g}_s{args.seed}"
    log = model_dir / "train_log.json"
    if args.reuse and log.exists():
        summary = json.loads(log.read_text())
    else:
        summary = train.train(work / "train_triplets.jsonl", None, model_dir, epochs=args.epochs, lr=args.lr,
                              seed=args.seed)
    timings["train_s"] = summary["train_seconds"]

    t = time.perf_counter()
    held_trip = [(r["anchor"], r["positive"], r["negative"]) for r in train.load_triplets(work / "heldout_triplets.jsonl")]
    demo_trip = [(r["anchor"], r["positive"], r["negative"]) for r in train.load_triplets(data_file("demo_triplets.jsonl"))]
    fine = load_model(str(model_dir))
    res = {name: evaluate.evaluate_model(model, held_trip, held, per_item=True)
           for name, model in (("base", base), ("fine-tuned", fine))}
    demo = {name: evaluate.triplet_accuracy(model, demo_trip) for name, model in (("base", base), ("fine-tuned", fine))}
    timings["evaluate_s"] = round(time.perf_counter() - t, 1)

    deltas = {}
    for metric, items in res["base"]["items"].items():
        deltas[metric] = {"change": float(res["fine-tuned"]["items"][metric].double().mean() - items.double().mean()),
                          "ci95": paired_bootstrap(items, res["fine-tuned"]["items"][metric], seed=args.seed)}
    deltas["demo_triplets_accuracy"] = {
        "change": demo["fine-tuned"]["accuracy"] - demo["base"]["accuracy"],
        "ci95": paired_bootstrap(demo["base"]["wins"], demo["fine-tuned"]["wins"], seed=args.seed)}
    for name in res:
        res[name].pop("items")
        res[name]["demo_triplets_accuracy"] = demo[name]["accuracy"]
    report = {
        "data": {"situations": len(rows), "train_situations": len(trn), "heldout_situations": len(held),
                 "train_triplets": summary["n_train"] + summary["n_eval"], "heldout_triplets": len(held_trip),
                 "demo_triplets": len(demo_trip)},
        "training": {k: summary[k] for k in ("n_train", "n_eval", "steps", "train_seconds", "first_loss", "last_loss",
                                             "eval_before", "eval_after", "settings")},
        "models": res, "changes": deltas, "timings": {**timings, "total_s": round(time.perf_counter() - t0, 1)},
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    md = [evaluate.markdown({"models": res, "threshold": 0.7}), "",
          "| change (fine-tuned - base) | value | paired bootstrap 95% CI |", "|---|---:|---:|"]
    md += [f"| {k} | {v['change']:+.3f} | [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] |" for k, v in deltas.items()]
    md.append(f"\ndemo_triplets_accuracy (60 hand-written): base {demo['base']['accuracy']:.3f}, "
              f"fine-tuned {demo['fine-tuned']['accuracy']:.3f}")
    report["markdown"] = "\n".join(md)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    (out / f"{args.name}.md").write_text(report["markdown"] + "\n", encoding="utf-8")
    print(json.dumps(report["data"]), json.dumps(report["timings"]), sep="\n")
    print(report["markdown"])
    print(f"(scratch with ValuePrism text and the model: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
