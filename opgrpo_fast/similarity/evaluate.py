"""Base vs fine-tuned similarity estimator, side by side.

    python -m opgrpo_fast.similarity.evaluate --model DIR [--base MODEL] --triplets T.jsonl --situations S.jsonl --out OUTDIR [--calibrate]

Triplet accuracies (share with cos(anchor, positive) > cos(anchor, negative)):

* ``triplets``: the rows of ``--triplets`` (e.g. DIR/eval_triplets.jsonl). Careful with triplets
  built by the heuristic judge: their positives passed a *base-model* cosine test and their
  negatives are less similar by construction, so the base model scores near 100% on them;
* ``name`` (from ``--situations``, no model picks anything): anchor = a perspective's name X,
  positive = X's explanation, negatives = every other explanation of the same situation;
* ``sentence`` (same): anchor = the first sentence of a multi-sentence explanation, positive =
  the rest of it, negatives = every other explanation of the same situation;
* ``restated`` (same): anchor / positive = two explanations of one situation whose perspective
  *names* agree (``NameJudge``'s rule: "Right to property" / "Respect for property"), negatives =
  every explanation that restates neither - the names judge's question with no model choosing
  pairs or negatives.
  Everything opener-stripped and keyword-masked, as in training.

Matching accuracies on ``--situations`` (the paper's; greedy one-to-one matching at 0.7 between
the references, split per perspective and kept as the reward keeps them, and candidate
sentences split on . ! ? 。！？, keyword-masked as the reward masks candidates):

* candidates = the row's ``response`` / ``completion`` if it has one, else the references
  themselves, opener-stripped and shuffled. "absolute" = share of items with every reference
  matched, "relative" = mean matched share. With the references as candidates this is a recall
  check only: an encoder that calls everything similar scores 100%. So two controls go with it:
* ``loo_false_match``: one reference's text is left out of the candidates (one whose perspective
  no other reference restates, where the item has one: dropping "Right to property" next to
  "Respect for property" leaves its twin, and matching the twin is right); share of items where
  that absent reference still reaches the threshold with some candidate sentence, i.e. would be
  counted as covered when it is not (lower is better, ideal 0); and, threshold-free,
  ``loo_separation``: the share of present references whose best candidate cosine beats the
  absent reference's (ties count half; 1 = present and absent perspectives perfectly separated).
  A model can raise the matching accuracies just by raising all similarities; these two show it;
* ``cross_false_match``: candidates from another situation; mean matched share (ideal 0).

``--calibrate`` adds each model at the lowest threshold whose ``loo_false_match`` is no higher
than the base model's at ``--threshold``: compared there, a gain is better ranking, not looser
calibration, and the fine-tuned model's threshold is the one to give the reward.

Writes OUTDIR/report.json and OUTDIR/report.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from .. import ops
from ..data_io import iter_situations
from ..text import keywords, mask_keywords, strip_opener, tag_gate
from .common import cli_errors, encode_unit, load_model, perspective_name, prepare_references, split_sentences
from .train import load_triplets

Triplet = tuple[str, str, str]
# (metric, higher is better) in table order
METRICS = [("triplets_accuracy", True), ("name_accuracy", True), ("sentence_accuracy", True),
           ("restated_accuracy", True), ("match_absolute", True), ("match_relative", True), ("loo_false_match", False),
           ("loo_separation", True), ("cross_false_match", False)]


class CachedEncoder:
    """``encode_unit`` with memory: every metric asks for its strings, each distinct string is
    encoded once per model (``prefetch`` does it all in one length-sorted pass)."""

    def __init__(self, model, batch_size: int = 64):
        self.model, self.batch_size, self.rows, self.emb = model, batch_size, {}, []

    def prefetch(self, texts: list[str]) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if new:
            self.emb.append(encode_unit(self.model, new, self.batch_size, progress=len(new) > 1000))
            base = sum(len(e) for e in self.emb[:-1])
            self.rows.update({t: base + i for i, t in enumerate(new)})

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.prefetch(texts)
        if not texts:
            return torch.empty(0, self.emb[0].shape[1] if self.emb else 0)
        table = torch.cat(self.emb) if len(self.emb) > 1 else self.emb[0]
        self.emb = [table]
        return table[torch.tensor([self.rows[t] for t in texts], dtype=torch.long)]


def _cached(model, batch_size: int = 64) -> CachedEncoder:
    return model if isinstance(model, CachedEncoder) else CachedEncoder(model, batch_size)


def triplet_accuracy(model, triplets: list[Triplet], batch_size: int = 64) -> dict:
    """Share of triplets with cos(a, p) > cos(a, n), and the mean margin cos(a, p) - cos(a, n)."""
    if not triplets:
        return {"accuracy": None, "margin": None, "n": 0}
    emb = _cached(model, batch_size)([s for t in triplets for s in t])
    a, p, n = emb[0::3], emb[1::3], emb[2::3]
    margin = (a * p).sum(-1) - (a * n).sum(-1)
    return {"accuracy": float((margin > 0).double().mean()), "margin": float(margin.double().mean()), "n": len(triplets),
            "wins": (margin > 0)}


def derived_triplets(situations: list[dict]) -> dict[str, list[Triplet]]:
    """The ``name``, ``sentence`` and ``restated`` triplet sets: built from the references alone,
    every (positive, other-perspective) combination, so no model's similarity chooses what is
    tested. ``restated``: anchor / positive = two references of one item whose perspective names
    agree by :class:`~.judges.NameJudge`'s rule ("Right to property" / "Respect for property"),
    negatives = every reference restating neither (both orientations)."""
    name, sentence, restated = [], [], []
    for row in situations:
        kws = keywords(row["situation"])
        stripped, masked = prepare_references(row["situation"], row["references"])
        labels = [perspective_name(ref) for ref in row["references"]]
        for i, label in enumerate(labels):
            others = [masked[j] for j in range(len(masked)) if j != i and masked[j] != masked[i]]
            if label:
                name.extend((mask_keywords(label, kws), masked[i], o) for o in others)
            parts = split_sentences(stripped[i])
            if len(parts) >= 2:
                first, rest = mask_keywords(parts[0], kws), mask_keywords(" ".join(parts[1:]), kws)
                sentence.extend((first, rest, o) for o in others)
        twin = _name_twins(labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                if twin[i][j] and masked[i] != masked[j]:
                    restated.extend((masked[i], masked[j], masked[k]) for k in range(len(labels))
                                    if k not in (i, j) and not (twin[i][k] or twin[j][k])
                                    and masked[k] not in (masked[i], masked[j]))
    return {"name": name, "sentence": sentence, "restated": restated}


def _as_candidates(texts: list[str]) -> str:
    """Join opener-stripped references into one text whose sentence split keeps them apart."""
    return " ".join(t if t[-1:] in ".!?。！？" else t + "." for t in texts if t)


def _name_twins(names: list[str | None]) -> list[list[bool]]:
    """[i][j]: i != j, both named, and the names agree by :class:`~.judges.NameJudge`'s rule."""
    from .judges import NameJudge

    same = NameJudge().same_name
    return [[bool(a and b and i != j and same(a, b)) for j, b in enumerate(names)] for i, a in enumerate(names)]


def _unrestated(references: list[str]) -> list[int]:
    """Indices of references whose perspective no other reference of the item restates: not the
    same text (opener stripped, case folded), and (where both are named) not the same perspective
    name by :class:`~.judges.NameJudge`'s rule. Leaving out a restated one would leave its twin
    behind, and matching the twin is right, not a false match."""
    twin = _name_twins([perspective_name(r) for r in references])
    texts = [strip_opener(r).lower() for r in references]
    return [i for i in range(len(references))
            if not any(j != i and (texts[j] == texts[i] or twin[i][j]) for j in range(len(references)))]


def candidate_sets(situations: list[dict], seed: int = 0) -> dict[str, list[list[str]]]:
    """Per item, the candidate sentences for "own" (response/completion, else the shuffled
    references), "loo" (shuffled references minus one; "dropped" is the left-out reference's
    index) and "cross" (the next situation's references); each sentence masked with the item's
    own keywords, as the reward does."""
    own, loo, cross, dropped = [], [], [], []
    stripped_all = [prepare_references(r["situation"], r["references"])[0] for r in situations]
    for k, row in enumerate(situations):
        rng = random.Random(seed * 1_000_003 + k)
        kws = keywords(row["situation"])
        mask = lambda text: [mask_keywords(s, kws) for s in split_sentences(text)]  # noqa: E731
        order = list(range(len(stripped_all[k])))
        rng.shuffle(order)
        refs = [stripped_all[k][i] for i in order]
        response = row.get("response", row.get("completion"))
        own.append(mask(tag_gate(response)[1] if isinstance(response, str) and response.strip() else _as_candidates(refs)))
        keep = sorted(order.index(i) for i in _unrestated(row["references"]))
        drop = rng.choice(keep) if keep else rng.randrange(len(refs))
        dropped.append(order[drop])
        loo.append(mask(_as_candidates(refs[:drop] + refs[drop + 1:])))
        cross.append(mask(_as_candidates(stripped_all[(k + 1) % len(situations)])) if len(situations) > 1 else [])
    return {"own": own, "loo": loo, "cross": cross, "dropped": dropped}


def match_counts(model, refs: list[list[str]], cands: list[list[str]], threshold: float = 0.7,
                 batch_size: int = 64) -> torch.Tensor:
    """Greedy one-to-one match count per item (refs x candidates at cosine >= threshold): one
    encoder pass for all distinct strings, one ragged ``ops.greedy_match`` call."""
    emb = _cached(model, batch_size)([s for r in refs for s in r] + [s for c in cands for s in c])
    n_r = torch.tensor([len(r) for r in refs], dtype=torch.long)
    n_c = torch.tensor([len(c) for c in cands], dtype=torch.long)
    ref_emb, cand_emb = emb[: int(n_r.sum())], emb[int(n_r.sum()):]
    blocks, r0, c0 = [], 0, 0
    for nr, nc in zip(n_r.tolist(), n_c.tolist()):
        blocks.append((ref_emb[r0:r0 + nr] @ cand_emb[c0:c0 + nc].T).reshape(-1))
        r0, c0 = r0 + nr, c0 + nc
    sizes = n_r * n_c
    offsets = torch.zeros(len(refs) + 1, dtype=torch.long)
    torch.cumsum(sizes, 0, out=offsets[1:])
    sims = torch.cat(blocks) if blocks else torch.empty(0)
    return ops.greedy_match(sims.float().contiguous(), offsets, n_r, n_c, threshold=threshold)


def absent_best(model, refs: list[list[str]], dropped: list[int], cands: list[list[str]]) -> torch.Tensor:
    """Per item, the best cosine (float32) between the left-out reference ``dropped`` and the
    candidates that lack it; -inf where there are no candidates."""
    enc = _cached(model)
    return torch.tensor([float((enc(r[d:d + 1]) @ enc(c).T).max()) if c else float("-inf")
                         for r, d, c in zip(refs, dropped, cands)], dtype=torch.float32)


def leave_one_out(model, refs: list[list[str]], dropped: list[int], cands: list[list[str]],
                  threshold: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, with candidates lacking reference ``dropped``: (does the absent reference reach
    ``threshold`` (float32) with some candidate?, share of present references whose best
    candidate cosine beats the absent one's, ties half)."""
    enc = _cached(model)
    absent = absent_best(enc, refs, dropped, cands)
    separation = []
    for r, d, c, a in zip(refs, dropped, cands, absent):
        present = (enc(r[:d] + r[d + 1:]) @ enc(c).T).max(dim=1).values.float() if c and len(r) > 1 else None
        separation.append(float(((present > a).double() + 0.5 * (present == a).double()).mean())
                          if present is not None else 0.5)
    return absent >= torch.tensor(threshold, dtype=torch.float32), torch.tensor(separation, dtype=torch.float64)


def calibrate_threshold(model, situations: list[dict], max_false_match: float, seed: int = 0,
                        thresholds: list[float] | None = None) -> dict:
    """The lowest matching threshold (of ``thresholds``, default 0.70, 0.71, ..., 0.99) whose
    ``loo_false_match`` is at most ``max_false_match``, with the matching accuracies there.

    Fine-tuning moves where "same perspective" starts on the cosine scale, so accuracies at the
    reward's fixed 0.7 mix better ranking with looser calibration. Compared at an equal false-
    match rate (e.g. the base model's at 0.7), a gain in ``match_*`` is ranking alone. Also the way
    to pick ``RewardConfig.match_threshold`` for a new estimator. Returns {"threshold", "match_absolute",
    "match_relative", "loo_false_match", "items"} (``threshold`` None if none qualifies)."""
    model = _cached(model)
    cands = candidate_sets(situations, seed)
    refs = [row["references"] for row in situations]
    n_ref = torch.tensor([len(r) for r in refs], dtype=torch.float64)
    absent = absent_best(model, refs, cands["dropped"], cands["loo"])  # once: only the threshold moves
    for t in thresholds if thresholds is not None else [round(0.70 + 0.01 * k, 2) for k in range(30)]:
        false_match = absent >= torch.tensor(t, dtype=torch.float32)  # as leave_one_out decides it
        if float(false_match.double().mean()) <= max_false_match:
            matched = match_counts(model, refs, cands["own"], t).double()
            items = {"match_absolute": matched == n_ref, "match_relative": matched / n_ref}
            return {"threshold": t, "loo_false_match": float(false_match.double().mean()),
                    **{k: float(v.double().mean()) for k, v in items.items()}, "items": items}
    return {"threshold": None, "match_absolute": None, "match_relative": None, "loo_false_match": None, "items": {}}


def calibrated_markdown(calibrated: dict) -> str:
    """One line for {"max_loo_false_match": target, label: calibrate_threshold(...) result, ...}."""
    target = calibrated["max_loo_false_match"]
    return f"equal false-match rate (loo_false_match <= {target:.3f}): " + "; ".join(
        f"{n} at threshold {c['threshold']:.2f}: absolute {c['match_absolute']:.3f}, relative {c['match_relative']:.3f}"
        if c["threshold"] is not None else f"{n}: no threshold up to 0.99 qualifies"
        for n, c in calibrated.items() if n != "max_loo_false_match")


def evaluate_model(model, triplets: list[Triplet], situations: list[dict], threshold: float = 0.7, seed: int = 0,
                   batch_size: int = 64, per_item: bool = False) -> dict:
    """Every metric for one encoder (None where the input for it was not given). ``per_item``
    adds ``items``: the per-triplet / per-situation outcomes behind each metric (for paired
    statistics between models)."""
    res: dict = {m: None for m, _ in METRICS}
    counts: dict = {}
    items: dict[str, torch.Tensor] = {}
    model = _cached(model, batch_size)
    derived = derived_triplets(situations) if situations else {}
    cands = candidate_sets(situations, seed) if situations else {}
    model.prefetch([s for t in triplets for s in t] + [s for rows in derived.values() for t in rows for s in t]
                   + [s for row in situations for s in row["references"]]
                   + [s for kind in ("own", "loo", "cross") for item in cands.get(kind, []) for s in item])
    if triplets:
        t = triplet_accuracy(model, triplets, batch_size)
        res["triplets_accuracy"], res["triplets_margin"] = t["accuracy"], t["margin"]
        counts["triplets"], items["triplets_accuracy"] = t["n"], t["wins"]
    if situations:
        for kind, rows in derived.items():
            t = triplet_accuracy(model, rows, batch_size)
            res[f"{kind}_accuracy"], res[f"{kind}_margin"] = t["accuracy"], t["margin"]
            counts[kind] = t["n"]
            if t["n"]:
                items[f"{kind}_accuracy"] = t["wins"]
        refs = [row["references"] for row in situations]
        n_ref = torch.tensor([len(r) for r in refs], dtype=torch.float64)
        m = {kind: match_counts(model, refs, cands[kind], threshold, batch_size).double() for kind in ("own", "cross")}
        loo_false, loo_sep = leave_one_out(model, refs, cands["dropped"], cands["loo"], threshold)
        per = {"match_absolute": m["own"] == n_ref, "match_relative": m["own"] / n_ref,
               "loo_false_match": loo_false, "loo_separation": loo_sep}
        if len(situations) > 1:
            per["cross_false_match"] = m["cross"] / n_ref
        res.update({k: float(v.double().mean()) for k, v in per.items()})
        items.update(per)
        counts["situations"] = len(situations)
    res["counts"] = counts
    if per_item:
        res["items"] = items
    return res


def markdown(report: dict) -> str:
    """Metrics as rows, models as columns, plus the change of the last model vs the first."""
    names = list(report["models"])
    lines = ["| metric | " + " | ".join(names) + " | change |", "|---|" + "---:|" * (len(names) + 1)]
    for metric, higher in METRICS:
        vals = [report["models"][n].get(metric) for n in names]
        if all(v is None for v in vals):
            continue
        cells = ["–" if v is None else f"{v:.3f}" for v in vals]
        delta = "" if None in (vals[0], vals[-1]) else f"{vals[-1] - vals[0]:+.3f}"
        arrow = "higher is better" if higher else "lower is better"
        lines.append(f"| {metric} ({arrow}) | " + " | ".join(cells) + f" | {delta} |")
    counts = report["models"][names[0]].get("counts", {})
    lines.append("")
    lines.append("n: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f"; match threshold {report['threshold']}")
    return "\n".join(lines)


def evaluate(models: dict, triplets: str | Path | list | None = None, situations: str | Path | list | None = None,
             out: str | Path | None = None, threshold: float = 0.7, seed: int = 0, batch_size: int = 64,
             on_error: str = "fail", calibrate: bool = False) -> dict:
    """``models``: label -> encoder (path / name / None / SentenceTransformer), in column order.
    ``calibrate`` (needs situations): also every model at the lowest threshold whose
    ``loo_false_match`` is no higher than the first model's at ``threshold``
    (:func:`calibrate_threshold`), under ``report["calibrated"]``."""
    trip = triplets
    if isinstance(triplets, (str, Path)):
        trip = [(r["anchor"], r["positive"], r["negative"]) for r in load_triplets(triplets)]
    sits = situations
    if isinstance(situations, (str, Path)):
        sits = [row for _, row in iter_situations(situations, on_error=on_error)]
    if not trip and not sits:
        raise ValueError("evaluate needs triplets and/or situations")
    report = {"threshold": threshold, "seed": seed, "models": {}}
    encoders = {label: CachedEncoder(load_model(enc), batch_size) for label, enc in models.items()}
    for label, enc in encoders.items():
        report["models"][label] = evaluate_model(enc, trip or [], sits or [], threshold, seed, batch_size)
    report["markdown"] = markdown(report)
    if calibrate and sits:
        target = report["models"][next(iter(models))]["loo_false_match"]
        report["calibrated"] = {"max_loo_false_match": target}
        for label, enc in encoders.items():
            cal = calibrate_threshold(enc, sits, target, seed)
            cal.pop("items")
            report["calibrated"][label] = cal
        report["markdown"] += "\n\n" + calibrated_markdown(report["calibrated"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (out / "report.md").write_text(report["markdown"] + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m opgrpo_fast.similarity.evaluate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="fine-tuned SentenceTransformer folder")
    ap.add_argument("--base", default=None, help="base encoder to compare with (default: offline all-MiniLM-L6-v2)")
    ap.add_argument("--triplets", default=None, help="JSONL triplets (anchor, positive, negative)")
    ap.add_argument("--situations", default=None, help="situations: JSONL {situation, references[, response]} or CSV prompt,answer")
    ap.add_argument("--out", required=True, help="folder for report.json and report.md")
    ap.add_argument("--threshold", type=float, default=0.7, help="matching threshold (the reward's)")
    ap.add_argument("--seed", type=int, default=0, help="candidate shuffling / leave-one-out seed")
    ap.add_argument("--calibrate", action="store_true",
                    help="also report each model at the threshold giving the base's false-match rate")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--on-error", default="fail", choices=["fail", "skip"], help="malformed situation row")
    args = ap.parse_args(argv)
    if not args.triplets and not args.situations:
        ap.error("give --triplets and/or --situations")
    report = evaluate({"base": args.base, "fine-tuned": args.model}, args.triplets, args.situations, args.out,
                      args.threshold, args.seed, args.batch_size, args.on_error, args.calibrate)
    print(report["markdown"])
    return report


if __name__ == "__main__":
    with cli_errors():
        main()
