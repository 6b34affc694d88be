"""Sampling G completions per prompt and the per-token log-probs the loss needs.

Layout of a rollout of N = prompts × G sequences (groups contiguous: rows g·G … g·G+G-1 are one
prompt's completions, as ``generate(num_return_sequences=G)`` returns them):

    input_ids        (N, P + C)  left-padded prompt ‖ completion, right-padded after EOS
    attention_mask   (N, P + C)  1 on real prompt tokens and on completion tokens up to EOS
    completion_ids   (N, C)
    completion_mask  (N, C)      1 up to and including the first EOS (the model learns to stop)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Rollout:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completions: list[str]
    advantages: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def micro_batch(self, rows: slice) -> dict:
        """One micro-batch as the loss takes it; right-trimmed to its longest completion (fewer
        padded positions in the forward: completions of one batch often differ by 2-3× in length)."""
        cm = self.completion_mask[rows]
        c = int(cm.sum(-1).max().item()) if cm.numel() else 0  # host sync, one per micro-batch
        c = max(c, 1)
        n_total = self.completion_ids.shape[1]
        cut = self.input_ids.shape[1] - n_total + c

        def take(t):
            return None if t is None else t[rows, :c]

        return {"input_ids": self.input_ids[rows, :cut], "attention_mask": self.attention_mask[rows, :cut],
                "completion_ids": take(self.completion_ids), "completion_mask": take(self.completion_mask),
                "advantages": None if self.advantages is None else self.advantages[rows],
                "old_logp": take(self.old_logp), "ref_logp": take(self.ref_logp)}


def _pad_right(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return t if t.shape[1] >= width else torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


@torch.no_grad()
def generate(lm, tokenizer, prompts: list[str], rc, eos: list[int], device, seed_offset: int = 0) -> Rollout:
    """Sample ``rc.num_generations`` completions for each chat-formatted prompt (KV cache, left
    padding, EOS stop, temperature/top-p), ``rc.generation_batch_size`` prompts per call."""
    from transformers import GenerationConfig

    # A fresh GenerationConfig: instruct checkpoints ship their own (Qwen2.5: top_k 20, top_p 0.8,
    # temperature 0.7, repetition_penalty 1.05) which would silently change the sampling distribution.
    gen_cfg = GenerationConfig(do_sample=True, temperature=rc.temperature, top_p=rc.top_p, top_k=0,
                               max_new_tokens=rc.max_completion_length, num_return_sequences=rc.num_generations,
                               eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    p_ids, p_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    was_training = lm.training
    lm.eval()
    chunk = rc.generation_batch_size or len(prompts)
    outs = []
    for s in range(0, len(prompts), chunk):
        out = lm.generate(input_ids=p_ids[s:s + chunk], attention_mask=p_mask[s:s + chunk],
                          generation_config=gen_cfg)
        outs.append(out[:, p_ids.shape[1]:])
    lm.train(was_training)
    width = max(o.shape[1] for o in outs)
    comp = torch.cat([_pad_right(o, width, tokenizer.pad_token_id) for o in outs])
    # mask up to and including the first EOS; a completion with no EOS ran to max length (kept, truncated)
    is_eos = torch.isin(comp, torch.tensor(eos, device=comp.device))
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    c_mask = (~after_eos).long()
    comp = comp.masked_fill(after_eos, tokenizer.pad_token_id)
    g = rc.num_generations
    input_ids = torch.cat([p_ids.repeat_interleave(g, 0), comp], 1)
    attn = torch.cat([p_mask.repeat_interleave(g, 0), c_mask], 1)
    lengths = c_mask.sum(-1).tolist()  # host sync: texts are needed on the host for the reward
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(comp.tolist(), lengths)], skip_special_tokens=True)
    return Rollout(input_ids, attn, comp, c_mask, texts)


@torch.no_grad()
def sequence_logprobs(head, rollout: Rollout, micro: int, temperature: float, autocast) -> torch.Tensor:
    """Per-token log-probs (N, C) of the completions under ``head`` (a PolicyHead, possibly wrapped),
    ``micro`` sequences per forward. Used for the reference model and for old log-probs."""
    from .loss import token_logprobs

    n_c = rollout.completion_ids.shape[1]
    out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.input_ids.device)
    for s in range(0, len(rollout), micro):
        rows = slice(s, s + micro)
        with autocast():
            logits = head(rollout.input_ids[rows], rollout.attention_mask[rows], n_c, want_logits=True)
        out[rows] = token_logprobs(logits, rollout.completion_ids[rows], temperature)
    return out * rollout.completion_mask
