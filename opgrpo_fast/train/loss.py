"""The GRPO objective: clipped surrogate + β·k3 KL to the reference, aggregated over a mini-batch.

Two paths give the same loss and gradients (tests/test_train_loss.py):

* ``torch`` — the reference: lm_head → (B, T, V) logits → selective log-softmax → loss.
* ``liger`` — Liger-Kernel's ``LigerFusedLinearGRPOLoss``: lm_head, log-softmax and the loss fused
  and chunked, so the (B, T, V) logits never exist (Qwen2.5: V = 151,936, i.e. 0.6 MB per token in
  fp32 — 3.9 GB for one 8 × 800 micro-batch). Resolved at import; ``set_loss_backend`` flips it.

Per token, with ratio r = exp(logp - old_logp) and advantage A of the token's sequence:
    pg  = -min(r·A, clip(r, 1-ε, 1+ε_high)·A)
    kl  = exp(ref - logp) - (ref - logp) - 1            (k3, ≥ 0; clamped at ±kl_clamp)
    ℓ   = pg + β·kl
Aggregation over the whole mini-batch (every micro-batch is divided by the mini-batch's count, so
gradient accumulation gives the mini-batch's gradient exactly):
    token-mean          Σ ℓ / (tokens in the mini-batch over all ranks / world)
    seq-mean-token-mean Σ_seq mean_tok ℓ / sequences in the rank's mini-batch
    seq-mean-token-sum  Σ_seq Σ_tok ℓ   / sequences in the rank's mini-batch
(DDP / DeepSpeed average gradients over ranks, hence the "/ world" in token-mean.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    from liger_kernel.chunked_loss import grpo_loss as _liger_grpo

    HAVE_LIGER = True
except Exception:  # not installed, or a kernel import failing on this platform
    HAVE_LIGER = False

LOSS_BACKEND = "liger" if HAVE_LIGER else "torch"


def set_loss_backend(name: str) -> str:
    """'liger' | 'torch'; tests flip this to compare the paths."""
    global LOSS_BACKEND
    if name not in ("liger", "torch"):
        raise ValueError(f"loss backend must be 'liger' or 'torch', got {name!r}")
    if name == "liger" and not HAVE_LIGER:
        raise ValueError("loss backend 'liger' needs liger-kernel (pip install liger-kernel)")
    LOSS_BACKEND = name
    return name


@dataclass
class Normalizer:
    """Denominators of one mini-batch (see the module docstring)."""

    tokens_global: float  # completion tokens in the mini-batch, summed over ranks (a host sync to get)
    seqs_local: int  # sequences in this rank's mini-batch
    world: int = 1


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(ids) under logits / temperature, in fp32 (logsumexp form: no (B, T, V) log-softmax copy)."""
    logits = logits.float() / temperature
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def k3(ref_logp: torch.Tensor, logp: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π ‖ π_ref) per token; unbiased, ≥ 0, low variance."""
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1.0
    return kl.clamp(-clamp, clamp) if clamp is not None else kl


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, norm: Normalizer) -> torch.Tensor:
    mask = mask.to(per_token.dtype)
    if mode == "token-mean":
        return (per_token * mask).sum() / max(norm.tokens_global / norm.world, 1.0)
    if mode == "seq-mean-token-mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)).sum() / norm.seqs_local
    if mode == "seq-mean-token-sum":
        return (per_token * mask).sum() / norm.seqs_local
    raise ValueError(f"unknown loss_type {mode!r}")


def grpo_loss_torch(logp, old_logp, ref_logp, advantages, mask, cfg, norm: Normalizer):
    """The reference path on per-token log-probs (B, T). Returns (loss, sums) where sums holds
    token-summed kl / clipped counts for metrics."""
    old_logp = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    lo, hi = 1.0 - cfg.epsilon, 1.0 + cfg.eps_high
    per_token = -torch.min(ratio * adv, ratio.clamp(lo, hi) * adv)
    m = mask.float()
    sums = {}
    if cfg.beta != 0.0:
        kl = k3(ref_logp, logp, cfg.kl_clamp)
        per_token = per_token + cfg.beta * kl
        sums["kl"] = (kl.detach() * m).sum()
    clipped = ((ratio < lo) & (adv < 0)) | ((ratio > hi) & (adv > 0))
    sums["clipped"] = (clipped.float() * m).sum()
    return aggregate(per_token, mask, cfg.loss_type, norm), sums


# Liger's k3 has no clamp; the paper clamps it at ±10. Liger looks ``k3_loss_fn`` up in its module at
# call time, so a clamped version is installed there once. With kl_clamp = None (or k3 < 10, i.e.
# all of normal training) it returns Liger's own value bit for bit.
_LIGER_KL_CLAMP: float | None = None
if HAVE_LIGER and not getattr(_liger_grpo.k3_loss_fn, "_opgrpo_clamped", False):
    _liger_k3 = _liger_grpo.k3_loss_fn

    def _k3_clamped(log_p, log_q):
        kl = _liger_k3(log_p, log_q)
        return kl if _LIGER_KL_CLAMP is None else kl.clamp(-_LIGER_KL_CLAMP, _LIGER_KL_CLAMP)

    _k3_clamped._opgrpo_clamped = True
    _liger_grpo.k3_loss_fn = _k3_clamped

# our aggregation → Liger's loss_type; the seq-mean modes are rescaled from micro- to mini-batch below
_LIGER_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum": "dr_grpo"}


def grpo_loss_liger(hidden, lm_head, ids, mask, advantages, old_logp, ref_logp, cfg, norm: Normalizer,
                    temperature: float = 1.0):
    """Liger's fused path on completion hidden states (B, T, H)."""
    global _LIGER_KL_CLAMP
    _LIGER_KL_CLAMP = cfg.kl_clamp
    fn = LigerFusedLinearGRPOLoss(
        beta=cfg.beta, use_ref_model=cfg.beta != 0.0, epsilon_low=cfg.epsilon, epsilon_high=cfg.eps_high,
        loss_type=_LIGER_TYPES[cfg.loss_type], max_completion_length=1,  # dr_grpo: Σ / (B · 1) = seq-mean-token-sum
        temperature=temperature, chunk_size=cfg.liger_chunk_size,
        compiled=hidden.is_cuda)  # torch.compile of the loss math pays off on GPU; on CPU it only costs compile time
    loss, metrics = fn(hidden, lm_head.weight, ids, mask.float(), advantages.float(),
                       bias=lm_head.bias, ref_per_token_logps=ref_logp if cfg.beta != 0.0 else None,
                       old_per_token_logps=old_logp,
                       num_items_in_batch=norm.tokens_global if cfg.loss_type == "token-mean" else None)
    if cfg.loss_type != "token-mean":  # Liger divides by the micro-batch's B; we want the mini-batch's
        loss = loss * (ids.shape[0] / norm.seqs_local)
    # Liger returns means over this micro-batch's tokens; turn them back into sums
    n_tok = mask.float().sum()
    sums = {"clipped": metrics[-1].detach() * n_tok}
    if cfg.beta != 0.0:
        sums["kl"] = metrics[0].detach() * n_tok
    return loss, sums


def compute_loss(policy, lm_head, mb, cfg, norm: Normalizer, temperature: float, backend: str | None = None):
    """One micro-batch: forward through ``policy`` (the DDP/DeepSpeed-wrapped PolicyHead) and the
    loss. ``mb`` holds input_ids, attention_mask, completion_ids, completion_mask, advantages,
    old_logp (None when on-policy), ref_logp (None when beta = 0)."""
    backend = backend or LOSS_BACKEND
    n = mb["completion_ids"].shape[1]
    out = policy(mb["input_ids"], mb["attention_mask"], n, want_logits=backend == "torch")
    if backend == "liger":
        return grpo_loss_liger(out, lm_head, mb["completion_ids"], mb["completion_mask"], mb["advantages"],
                               mb["old_logp"], mb["ref_logp"], cfg, norm, temperature)
    logp = token_logprobs(out, mb["completion_ids"], temperature)
    return grpo_loss_torch(logp, mb["old_logp"], mb["ref_logp"], mb["advantages"], mb["completion_mask"], cfg,
                           norm)
