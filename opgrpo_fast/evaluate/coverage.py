"""Similarity coverage with the reward's own estimator (one batched ``OvertonReward.score`` call).

Per item: the greedy one-to-one match count at cosine >= 0.7 (the reward's ``match_threshold``)
over the number of references. Reported:

* relative matching accuracy: mean matched share of references;
* absolute matching accuracy: share of items with every reference matched;
* uniqueness rate (non-redundant share of the answer's perspectives), format pass rate (tag gate
  passed), mean format score and reward, mean generated tokens.
"""
from __future__ import annotations

from typing import Sequence

from ..config import PROMPT_TEMPLATE
from . import EvalItem


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def coverage_scores(reward, items: Sequence[EvalItem], responses: Sequence[str],
                    n_tokens: Sequence[int | None] | None = None) -> tuple[dict, list[dict]]:
    """(summary, per-item rows) for aligned items and responses. ``reward`` is an OvertonReward;
    prompts carry the training template so keywords are taken from the situation whatever prompt
    style produced the answer."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    prompts = [PROMPT_TEMPLATE.format(situation=it.situation) for it in items]
    b = reward.score(prompts, list(responses), [list(it.references) for it in items])
    matches, n_refs = b.n_matches.tolist(), b.n_references.tolist()
    rows = []
    for i, it in enumerate(items):
        rows.append(dict(matched=matches[i], n_references=n_refs[i], n_perspectives=int(b.n_candidates[i]),
                         matched_share=matches[i] / n_refs[i], all_matched=matches[i] == n_refs[i],
                         uniqueness_rate=float(b.uniqueness_rate[i]), tag_ok=float(b.tag[i]) == 0.0,
                         format=float(b.format[i]), reward=float(b.total[i])))
    toks = [t for t in (n_tokens or []) if t is not None]
    summary = dict(
        n=len(rows),
        match_threshold=reward.config.match_threshold,
        relative_matching=_mean([r["matched_share"] for r in rows]),
        absolute_matching=_mean([float(r["all_matched"]) for r in rows]),
        uniqueness_rate=_mean([r["uniqueness_rate"] for r in rows]),
        format_pass_rate=_mean([float(r["tag_ok"]) for r in rows]),
        format_score=_mean([r["format"] for r in rows]),
        reward=_mean([r["reward"] for r in rows]),
        mean_perspectives=_mean([r["n_perspectives"] for r in rows]),
        mean_tokens=_mean(toks),
    )
    return summary, rows
