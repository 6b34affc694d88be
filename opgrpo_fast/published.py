"""The Overton reward with the published OP-GRPO code's structure: the oracle for tests and the
baseline for benchmarks.

Per completion: one encoder call for its references plus its candidates (coverage), a second call
for its candidates again (uniqueness), a numpy greedy loop, Python loops for redundancy. Same
text rules (opgrpo_fast.text) and config; nothing batched, nothing cached. Slow on purpose.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import RewardConfig, situation_from_prompt
from .text import FormatWeights, format_score, keywords, mask_keywords, normalize_references, split_perspectives, tag_gate


def _cos(model, a: list[str], b: list[str]) -> np.ndarray:
    ea = torch.nn.functional.normalize(torch.as_tensor(model.encode(a, convert_to_tensor=True)).float(), dim=-1)
    eb = torch.nn.functional.normalize(torch.as_tensor(model.encode(b, convert_to_tensor=True)).float(), dim=-1)
    return (ea @ eb.T).numpy()


def greedy_count(sims: np.ndarray, threshold: float) -> int:
    """Repeated argmax with row/column removal (np.argmax: first max in row-major order)."""
    s = np.array(sims, dtype=np.float32, copy=True)
    thr = np.float32(threshold)
    count = 0
    while s.size and count < min(s.shape):
        r, c = np.unravel_index(int(np.argmax(s)), s.shape)
        if not s[r, c] >= thr:
            break
        count += 1
        s[r, :] = -np.inf
        s[:, c] = -np.inf
    return count


def redundant_count(sims: np.ndarray, threshold: float) -> int:
    n = sims.shape[0]
    red = [False] * n
    thr = np.float32(threshold)
    for i in range(n):
        if red[i]:
            continue
        for j in range(i + 1, n):
            if sims[i, j] >= thr:
                red[j] = True
    return sum(red)


def coverage_bucket(rate: float, cfg: RewardConfig) -> float:
    if not cfg.bucketed:
        return rate * cfg.coverage_max
    if rate == 0:
        return 0.0
    for k, edge in enumerate(cfg.coverage_edges):
        if rate < edge:
            return float(k + 1)
    return cfg.coverage_max


def uniqueness_bucket(u: float, cfg: RewardConfig) -> float:
    if not cfg.bucketed:
        return u
    if u >= 1.0:
        return 1.0
    return next((v for above, v in cfg.uniqueness_steps if u > above), 0.0)


def score_one(model, prompt: str, completion: str, references, cfg: RewardConfig = RewardConfig()) -> dict:
    """Score one completion the way the published code does; returns every reward part."""
    passed, body = tag_gate(completion)
    tag = 0.0 if passed else cfg.tag_penalty
    refs = normalize_references(references)
    kws = (keywords(situation_from_prompt(prompt) if cfg.strip_prompt_template else prompt)
           if cfg.mask_keywords else frozenset())
    cands = [mask_keywords(s, kws) for s in split_perspectives(body)]
    matches = greedy_count(_cos(model, refs, cands), cfg.match_threshold) if refs and cands else 0
    rate = matches / len(refs) if refs and cands else 0.0
    n = len(cands)
    u = 1.0 if n <= 1 else (n - redundant_count(_cos(model, cands, cands), cfg.redundancy_threshold)) / n
    cov, uniq = coverage_bucket(rate, cfg), uniqueness_bucket(u, cfg)
    fmt = format_score(completion, FormatWeights())
    total = cfg.weight_coverage * cov + cfg.weight_format * fmt + tag + cfg.weight_uniqueness * uniq
    if cfg.clamp_min is not None:
        total = max(cfg.clamp_min, total)
    return {"total": total, "coverage": cov, "uniqueness": uniq, "format": fmt, "tag": tag,
            "coverage_rate": rate, "uniqueness_rate": u, "n_matches": matches}


def score_published(model, prompts, completions, references, cfg: RewardConfig = RewardConfig()) -> list[dict]:
    return [score_one(model, p, c, r, cfg) for p, c, r in zip(prompts, completions, references)]
