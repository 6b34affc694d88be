"""Build (anchor, positive, hard negative) triplets from situations' reference perspectives.

    python -m opgrpo_fast.similarity.build_triplets --data IN --out OUT.jsonl [--judge names|heuristic|hf|openai|nli]

Per situation (at most one triplet):

1. its references, split per perspective, lose their "In/From the perspective of X," opener and
   have the situation's keywords masked as ``[KW]`` (as the reward masks candidates);
2. the base encoder embeds the masked sentences; every pair with cosine >= ``--min-cos`` (0.75) is
   a candidate and goes to the judge ("same meaning or perspective?", opener-stripped text);
3. the most similar pair judged "yes" gives anchor / positive; the hard negative is the sentence
   most similar to the anchor that is not "the same": a candidate pair judged "no", or - when no
   such candidate is left - the most similar sentence under ``--min-cos``, which the filter's own
   premise already calls different (``negative_judged: false`` marks that case). Of the two
   orientations of the pair, the one with the harder negative is kept.

Judges (``judges.py``): ``hf`` (local causal LM), ``openai`` (chat endpoint), ``nli`` (cross-encoder)
ask the model; offline, ``names`` (default) compares the perspectives' own names ("Right to
property" = "Respect for property") and falls back to ``heuristic`` (cosine AND content-word
overlap) for references without a name. With ``names`` the cosine filter only bounds the work:
the verdict does not depend on the base model, so ``--min-cos 0.5`` gives ~4x more triplets
(ValuePrism: 356 vs 94 from 1,200 situations) with no judge cost.

Output rows: ``{"situation", "anchor", "positive", "negative", "cos_pos", "cos_neg",
"negative_judged", "judge", "line"}`` (masked text: what the estimator trains on). Situations
without a triplet go to ``OUT`` with ``.rejected.jsonl`` as suffix, with the reason, so a rerun
skips them as well. Resumable: rows are appended chunk by chunk (flushed), and situations already
in either file are skipped; delete the ``.rejected`` file to retry those with another judge.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..data_io import iter_rows, iter_situations
from ..text import keywords
from .common import cli_errors, encode_unit, load_model, perspective_name, prepare_references
from .judges import JUDGES, Judge, make_judge

MIN_COS = 0.75


def candidate_pairs(sims: torch.Tensor, min_cos: float = MIN_COS) -> list[tuple[float, int, int]]:
    """(cos, i, j) for i < j with cos >= min_cos, most similar first (ties: lower indices first)."""
    n = sims.shape[0]
    out = [(float(sims[i, j]), i, j) for i in range(n) for j in range(i + 1, n) if sims[i, j] >= min_cos]
    return sorted(out, key=lambda t: (-t[0], t[1], t[2]))


def select_triplet(sims: torch.Tensor, verdicts: dict[tuple[int, int], bool],
                   min_cos: float = MIN_COS) -> dict | str:
    """Pick indices from one situation's cosine matrix and the judge's verdicts on its candidate
    pairs (keys (i, j), i < j). Returns {"a", "p", "n", "cos_pos", "cos_neg", "negative_judged"} or
    the reason there is no triplet."""
    n = sims.shape[0]
    if n < 3:
        return "fewer than 3 references"
    cands = candidate_pairs(sims, min_cos)
    if not cands:
        return f"no pair with cosine >= {min_cos}"
    yes = [(i, j) for _, i, j in cands if verdicts.get((i, j))]
    if not yes:
        return "no candidate pair judged the same"
    i, j = yes[0]

    def same(x: int, y: int) -> bool:
        return verdicts.get((min(x, y), max(x, y)), False)

    best = None
    for a, p in ((i, j), (j, i)):
        for k in sorted((k for k in range(n) if k not in (i, j)), key=lambda k: (-float(sims[a, k]), k)):
            if same(a, k) or same(p, k):  # "the same" as the anchor (or its positive): not a negative
                continue
            cos_neg = float(sims[a, k])
            if best is None or cos_neg > best["cos_neg"]:
                best = {"a": a, "p": p, "n": k, "cos_pos": float(sims[i, j]), "cos_neg": cos_neg,
                        "negative_judged": cos_neg >= min_cos}
            break
    return best if best is not None else "every other sentence judged the same as the pair"


def _prepare(row: dict) -> tuple[list[str], list[str], list[str | None]]:
    """(opener-stripped, masked, perspective name or None) per reference, repeats dropped: a
    triplet whose anchor equals its positive teaches nothing, and in-batch duplicates (same masked
    text) confuse the ranking loss."""
    stripped, masked = prepare_references(row["situation"], row["references"])
    names = [perspective_name(r) for r in row["references"]]
    keep = [i for i, m in enumerate(masked) if m not in masked[:i]]
    return [stripped[i] for i in keep], [masked[i] for i in keep], [names[i] for i in keep]


def build(rows: Iterable[tuple[int, dict]], encoder, judge: Judge, min_cos: float = MIN_COS, chunk: int = 64,
          batch_size: int = 64, progress: bool = True, total: int | None = None) -> Iterator[list[dict]]:
    """Yield, per chunk of situations, one record each: a triplet row, or ``{"situation",
    "rejected": reason}``. One encoder call and one batched judge call per chunk."""
    rows = iter(rows)
    bar = tqdm(total=total, desc="situations", unit="sit", disable=not progress)
    while True:
        batch = [r for _, r in zip(range(chunk), rows)]
        if not batch:
            break
        prepared = [_prepare(r) for _, r in batch]
        flat = [s for _, masked, _ in prepared for s in masked]
        emb = encode_unit(encoder, flat, batch_size=batch_size)
        sims, pairs, ctx_cos, ctx_kw, ctx_names, owners, start = [], [], [], [], [], [], 0
        for k, ((_, row), (stripped, masked, names)) in enumerate(zip(batch, prepared)):
            e = emb[start:start + len(masked)]
            start += len(masked)
            s = e @ e.T
            sims.append(s)
            kws = keywords(row["situation"])
            for cos, i, j in candidate_pairs(s, min_cos):
                pairs.append((stripped[i], stripped[j]))
                ctx_cos.append(cos)
                ctx_kw.append(kws)
                ctx_names.append((names[i], names[j]))
                owners.append((k, i, j))
        answers = judge.judge(pairs, cosines=ctx_cos, keywords=ctx_kw, names=ctx_names) if pairs else []
        if len(answers) != len(pairs):
            raise RuntimeError(f"judge {judge.name} returned {len(answers)} answers for {len(pairs)} pairs")
        verdicts: list[dict[tuple[int, int], bool]] = [{} for _ in batch]
        for (k, i, j), ans in zip(owners, answers):
            verdicts[k][(i, j)] = bool(ans)
        records = []
        for k, (lineno, row) in enumerate(batch):
            pick = select_triplet(sims[k], verdicts[k], min_cos)
            if isinstance(pick, str):
                records.append({"situation": row["situation"], "rejected": pick, "line": lineno})
                continue
            masked = prepared[k][1]
            rec = {"situation": row["situation"], "anchor": masked[pick["a"]], "positive": masked[pick["p"]],
                   "negative": masked[pick["n"]], "cos_pos": round(pick["cos_pos"], 6),
                   "cos_neg": round(pick["cos_neg"], 6), "negative_judged": pick["negative_judged"],
                   "judge": judge.name, "line": lineno}
            if "id" in row:
                rec["id"] = row["id"]
            records.append(rec)
        bar.update(len(batch))
        yield records
    bar.close()


def rejected_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".rejected.jsonl")


def done_situations(path: Path) -> set[str]:
    """Situations already recorded in ``path``. The incomplete last line a killed run may leave
    is dropped (with a note) so the append starts on a clean line; any other bad line is an error."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        print(f"note: {path}: dropping an incomplete last line (an interrupted run)", file=sys.stderr)
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return {row["situation"] for _, row in iter_rows(path, required=("situation",))}


def run(data: str | Path, out: str | Path, judge: Judge, encoder, on_error: str = "fail", limit: int | None = None,
        min_cos: float = MIN_COS, chunk: int = 64, batch_size: int = 64, progress: bool = True) -> Counter:
    """Read situations, skip those already in ``out`` (or its rejected file), append new records.
    Returns counts: written, rejected (+ per reason), already_done, duplicate."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rej = rejected_path(out)
    done = done_situations(out) | done_situations(rej)
    stats: Counter = Counter()
    todo, seen = [], set()
    for lineno, row in iter_situations(data, on_error=on_error):  # parse all first: fail before any model work
        if limit is not None and len(seen) >= limit:
            break
        if row["situation"] in seen:
            stats["duplicate"] += 1
            continue
        seen.add(row["situation"])
        if row["situation"] in done:
            stats["already_done"] += 1
            continue
        todo.append((lineno, row))
    with out.open("a", encoding="utf-8") as f_out, rej.open("a", encoding="utf-8") as f_rej:
        for records in build(todo, encoder, judge, min_cos, chunk, batch_size, progress, total=len(todo)):
            for rec in records:
                if "rejected" in rec:
                    stats["rejected"] += 1
                    stats[f"rejected: {rec['rejected']}"] += 1
                    f_rej.write(json.dumps(rec, ensure_ascii=False) + "\n")
                else:
                    stats["written"] += 1
                    stats["negative_judged" if rec["negative_judged"] else "negative_under_min_cos"] += 1
                    f_out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f_out.flush()
            f_rej.flush()
    return stats


def main(argv: list[str] | None = None) -> Counter:
    ap = argparse.ArgumentParser(prog="python -m opgrpo_fast.similarity.build_triplets",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, help="situations: JSONL {situation, references} or CSV prompt,answer")
    ap.add_argument("--out", required=True, help="triplets JSONL (appended to; situations already there are skipped)")
    ap.add_argument("--judge", default="names", choices=JUDGES, help="who decides 'same perspective?'")
    ap.add_argument("--judge-model", default=None, help="hf/nli: model path; openai: served model name")
    ap.add_argument("--judge-url", default=None, help="openai: API base, e.g. http://localhost:8000/v1")
    ap.add_argument("--base", default=None, help="base encoder path/name (default: offline all-MiniLM-L6-v2)")
    ap.add_argument("--on-error", default="fail", choices=["fail", "skip"], help="malformed input row: stop, or warn and skip")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N situations of the input")
    ap.add_argument("--min-cos", type=float, default=MIN_COS, help="base cosine for a pair to reach the judge")
    ap.add_argument("--heuristic-min-cos", type=float, default=0.8, help="heuristic judge: cosine for 'yes'")
    ap.add_argument("--heuristic-min-overlap", type=float, default=0.1, help="heuristic judge: content-word Jaccard for 'yes'")
    ap.add_argument("--name-min-overlap", type=float, default=0.5,
                    help="names judge: Jaccard of the perspective names' stems for 'yes'")
    ap.add_argument("--device", default=None, help="encoder / local judge device (default: the library's choice)")
    ap.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    ap.add_argument("--chunk", type=int, default=64, help="situations per encoder + judge round (and per flush)")
    args = ap.parse_args(argv)
    if args.judge in ("hf", "nli", "openai") and not args.judge_model:
        ap.error(f"--judge {args.judge} needs --judge-model")
    if args.judge == "openai" and not args.judge_url:
        ap.error("--judge openai needs --judge-url")

    encoder = load_model(args.base, args.device)
    judge = make_judge(args.judge, model=args.judge_model, url=args.judge_url, encoder=encoder, device=args.device,
                       min_cos=args.heuristic_min_cos, min_overlap=args.heuristic_min_overlap,
                       min_name_overlap=args.name_min_overlap)
    stats = run(args.data, args.out, judge, encoder, on_error=args.on_error, limit=args.limit, min_cos=args.min_cos,
                chunk=args.chunk, batch_size=args.batch_size)
    print(f"{stats['written']} triplet(s) written to {args.out}; {stats['rejected']} situation(s) without a triplet "
          f"(-> {rejected_path(args.out)}); {stats['already_done']} already done; {stats['duplicate']} duplicate(s)")
    for key in sorted(k for k in stats if k.startswith("rejected: ")):
        print(f"  {key[len('rejected: '):]}: {stats[key]}")
    return stats


if __name__ == "__main__":
    with cli_errors():
        main()
