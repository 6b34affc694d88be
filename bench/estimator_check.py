"""Real-data check of the similarity-estimator step on ValuePrism (dev, 1,200 situations).

    python bench/estimator_check.py --out bench/results/estimator [--data ../shared/data/valueprism_dev.jsonl]
        [--judge names|heuristic] [--min-cos 0.5] [--seeds 0 1 2] [--epochs 2]

Per seed (the split, the training and the bootstrap all follow it):

1. split the situations into train / held-out;
2. build triplets from both splits with an offline judge (default ``names``: the perspectives' own
   names decide "same perspective?", so which pairs are positives does not depend on the base
   model; pairs from cosine 0.5 up reach it, not the builder's 0.75, because this judge costs
   nothing and 0.75 leaves 94 triplets from 1,200 situations); train all-MiniLM-L6-v2 on the train split's triplets with the paper's settings (batch
   32, lr 2.1457e-5, warmup 0.0325, scale 70, 2 epochs);
3. evaluate base vs fine-tuned on the held-out situations and triplets
   (``opgrpo_fast.similarity.evaluate``), plus the 60 hand-written demo triplets, with paired
   bootstrap 95% intervals of each change; and the matching accuracies once more at an *equal
   false-match rate* (each model at its lowest threshold whose ``loo_false_match`` is no higher
   than the base model's at 0.7), which separates better ranking from looser calibration.

Writes NAME_seedK.{json,md} per seed and NAME.{json,md}: every change per seed with its interval,
and the mean change over the seeds.

With ``--judge heuristic`` the held-out triplets are *not* a fair test: their positives passed a
base-model cosine rule, so the base model scores ~90-100% on them by construction.

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
from opgrpo_fast.similarity.judges import make_judge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "valueprism_dev.jsonl"


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, n_boot: int = 2000, seed: int = 0,
                     clusters: list[int] | None = None) -> list[float]:
    """95% interval of mean(b) - mean(a), items resampled with replacement (paired). ``clusters``:
    sizes of consecutive runs of items that belong together (e.g. the triplets of one situation);
    then whole clusters are resampled, since items within one are not independent."""
    diff = b.double() - a.double()
    g = torch.Generator().manual_seed(seed)
    if clusters is None:
        idx = torch.randint(0, len(diff), (n_boot, len(diff)), generator=g)
        means = diff[idx].mean(dim=1)
    else:
        sizes = torch.tensor(clusters, dtype=torch.float64)
        if int(sizes.sum()) != len(diff):
            raise ValueError(f"cluster sizes sum to {int(sizes.sum())}, not to the {len(diff)} items")
        keep = sizes > 0
        owner = torch.repeat_interleave(torch.arange(len(clusters)), torch.tensor(clusters))
        sums = torch.zeros(len(clusters), dtype=torch.float64).index_add_(0, owner, diff)[keep]
        sizes = sizes[keep]
        idx = torch.randint(0, len(sizes), (n_boot, len(sizes)), generator=g)
        means = sums[idx].sum(dim=1) / sizes[idx].sum(dim=1)
    return [float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def load_rows(path: str) -> list[dict]:
    rows, seen = [], set()
    for _, row in iter_situations(path):
        if row["situation"] not in seen:
            seen.add(row["situation"])
            rows.append({"situation": row["situation"], "references": row["references"]})
    return rows


def build_split_triplets(work: Path, splits: dict[str, list[dict]], judge, base, min_cos: float, reuse: bool) -> dict:
    timings = {}
    for split, sits in splits.items():
        t = time.perf_counter()
        write_jsonl(work / f"{split}_situations.jsonl", sits)
        path = work / f"{split}_triplets.jsonl"
        if not reuse:
            for p in (path, build_triplets.rejected_path(path)):
                p.unlink(missing_ok=True)
        build_triplets.run(work / f"{split}_situations.jsonl", path, judge, base, min_cos=min_cos)  # resumes if kept
        timings[f"build_{split}_s"] = round(time.perf_counter() - t, 1)
        print(f"{split}: {len(path.read_text().splitlines())} triplets from {len(sits)} situations", flush=True)
    return timings


def changes(base_items: dict, fine_items: dict, seed: int, clusters: dict[str, list[int]] | None = None) -> dict:
    """{metric: {"change", "ci95"}} for the metrics both models have per-item outcomes for;
    ``clusters[metric]``: that metric's cluster sizes (see :func:`paired_bootstrap`)."""
    clusters = clusters or {}
    return {m: {"change": float(fine_items[m].double().mean() - base_items[m].double().mean()),
                "ci95": paired_bootstrap(base_items[m], fine_items[m], seed=seed, clusters=clusters.get(m))}
            for m in base_items if m in fine_items}


def run_seed(args, rows: list[dict], seed: int, work: Path, base, judge) -> dict:
    """Split, build, train, evaluate for one seed; returns the report (numbers only)."""
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_held = round(args.heldout * len(rows))
    held, trn = rows[:n_held], rows[n_held:]
    timings = {"reused_work": bool(args.reuse),  # reused: build/train times are those of the earlier run or ~0
               **build_split_triplets(work, {"train": trn, "heldout": held}, judge, base, args.min_cos, args.reuse)}

    model_dir = work / f"model_e{args.epochs:g}_lr{args.lr:g}"
    log = model_dir / "train_log.json"
    if args.reuse and log.exists():
        summary = json.loads(log.read_text())
    else:
        summary = train.train(work / "train_triplets.jsonl", None, model_dir, epochs=args.epochs, lr=args.lr, seed=seed)
    timings["train_s"] = summary["train_seconds"]

    t = time.perf_counter()
    as_tuples = lambda path: [(r["anchor"], r["positive"], r["negative"]) for r in train.load_triplets(path)]  # noqa: E731
    held_trip, demo_trip = as_tuples(work / "heldout_triplets.jsonl"), as_tuples(data_file("demo_triplets.jsonl"))
    encoders = {"base": evaluate.CachedEncoder(base), "fine-tuned": evaluate.CachedEncoder(load_model(str(model_dir)))}
    res = {n: evaluate.evaluate_model(m, held_trip, held, seed=seed, per_item=True) for n, m in encoders.items()}
    # the matching accuracies again at an equal false-match rate: each model at its lowest
    # threshold whose loo_false_match is no higher than the base model's at the reward's 0.7
    target = res["base"]["loo_false_match"]
    cal = {n: evaluate.calibrate_threshold(m, held, target, seed=seed) for n, m in encoders.items()}
    demo = {n: evaluate.triplet_accuracy(m, demo_trip) for n, m in encoders.items()}
    timings["evaluate_s"] = round(time.perf_counter() - t, 1)

    # the derived triplet sets hold many triplets per situation: resample situations, not triplets
    per_situation = [{k: len(v) for k, v in evaluate.derived_triplets([row]).items()} for row in held]
    clusters = {f"{k}_accuracy": [n[k] for n in per_situation] for k in per_situation[0]} if held else {}
    deltas = changes(res["base"]["items"], res["fine-tuned"]["items"], seed, clusters)
    if cal["fine-tuned"]["threshold"] is not None:
        deltas.update({f"{m} @ equal false-match": v for m, v in
                       changes(cal["base"]["items"], cal["fine-tuned"]["items"], seed).items()})
    demo_items = [{"triplets_accuracy": demo[n]["wins"]} for n in encoders]  # base, fine-tuned
    deltas.update({f"demo_{m}": v for m, v in changes(*demo_items, seed).items()})
    for name in res:
        res[name].pop("items")
        res[name]["demo_triplets_accuracy"] = demo[name]["accuracy"]
        cal[name].pop("items")
    report = {
        "seed": seed,
        "data": {"situations": len(rows), "train_situations": len(trn), "heldout_situations": len(held),
                 "train_triplets": summary["n_train"] + summary["n_eval"], "heldout_triplets": len(held_trip),
                 "demo_triplets": len(demo_trip), "judge": args.judge, "min_cos": args.min_cos},
        "training": {k: summary[k] for k in ("n_train", "n_eval", "steps", "train_seconds", "first_loss", "last_loss",
                                             "eval_before", "eval_after", "settings")},
        "models": res, "changes": deltas, "equal_false_match": {"max_loo_false_match": target, **cal},
        "timings": {**timings, "total_s": round(time.perf_counter() - t0, 1)},
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    md = [f"seed {seed}: {report['data']}", "", evaluate.markdown({"models": res, "threshold": 0.7}), "",
          "| change (fine-tuned - base) | value | paired bootstrap 95% CI |", "|---|---:|---:|"]
    md += [f"| {k} | {v['change']:+.3f} | [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] |" for k, v in deltas.items()]
    md += ["", evaluate.calibrated_markdown(report["equal_false_match"]) + " (the base's at 0.7)"]
    report["markdown"] = "\n".join(md)
    return report


def summary_markdown(reports: list[dict]) -> str:
    """One row per change: its value and 95% interval per seed, and the mean over the seeds."""
    seeds = [r["seed"] for r in reports]
    lines = ["| change (fine-tuned - base) | " + " | ".join(f"seed {s} [95% CI]" for s in seeds) + " | mean |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for metric in reports[0]["changes"]:
        vals = [r["changes"].get(metric) for r in reports]
        cells = ["–" if v is None else f"{v['change']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for v in vals]
        known = [v["change"] for v in vals if v is not None]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {sum(known) / len(known):+.3f} |")
    lines.append("")
    lines.append("| seed | " + " | ".join(f"{m} base → fine-tuned" for m in ("triplets_accuracy", "match_absolute",
                                                                               "match_relative", "loo_false_match"))
                 + " | train triplets (steps) | held-out triplets |")
    lines.append("|---|" + "---:|" * 6)
    for r in reports:
        m = r["models"]
        cells = [f"{m['base'][k]:.3f} → {m['fine-tuned'][k]:.3f}" for k in ("triplets_accuracy", "match_absolute",
                                                                          "match_relative", "loo_false_match")]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['data']['train_triplets']} "
                     f"({r['training']['steps']}) | {r['data']['heldout_triplets']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/estimator", help="folder for the numbers (JSON + markdown)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ValuePrism situations JSONL")
    ap.add_argument("--work", default=None, help="scratch folder for splits / triplets / models (default: a temp dir)")
    ap.add_argument("--judge", default="names", choices=["names", "heuristic"], help="offline judge (see judges.py)")
    ap.add_argument("--min-cos", type=float, default=0.5, help="base cosine for a pair to reach the judge")
    ap.add_argument("--heldout", type=float, default=0.25, help="held-out share of the situations")
    ap.add_argument("--epochs", type=float, default=train.DEFAULTS["epochs"])
    ap.add_argument("--lr", type=float, default=train.DEFAULTS["lr"])
    ap.add_argument("--name", default="estimator_check", help="stem of the result files in --out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split + training per seed")
    ap.add_argument("--limit", type=int, default=None, help="use only N situations (smoke runs)")
    ap.add_argument("--reuse", action="store_true", help="keep triplets / models already in --work")
    args = ap.parse_args(argv)

    if not Path(args.data).exists():
        print(f"skipped: {args.data} not found (ValuePrism is read at run time only, never bundled)")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="estimator_check_"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(args.data)[: args.limit] if args.limit else load_rows(args.data)
    base, judge = load_model(None), make_judge(args.judge)
    reports = []
    for seed in args.seeds:
        rep = run_seed(args, rows, seed, work / f"seed{seed}", base, judge)
        reports.append(rep)
        (out / f"{args.name}_seed{seed}.json").write_text(json.dumps(rep, indent=1, default=float), encoding="utf-8")
        (out / f"{args.name}_seed{seed}.md").write_text(rep["markdown"] + "\n", encoding="utf-8")
        print(rep["markdown"], json.dumps(rep["timings"]), sep="\n", flush=True)
    md = summary_markdown(reports)
    summary = {"settings": {k: v for k, v in vars(args).items() if k not in ("data", "work", "out")},
               "mean_change": {m: sum(r["changes"][m]["change"] for r in reports) / len(reports)
                               for m in reports[0]["changes"] if all(m in r["changes"] for r in reports)},
               "per_seed": {r["seed"]: r["changes"] for r in reports}, "markdown": md}
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    (out / f"{args.name}.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"(scratch with ValuePrism text and the models: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
