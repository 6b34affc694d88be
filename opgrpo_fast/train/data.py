"""Training rows → chat prompts, and a resumable, rank-sharded prompt sampler.

Rows: .jsonl / .csv through ``opgrpo_fast.data_io`` (a malformed row is a DataError naming file:line),
or a HF dataset (saved folder or hub name, via ``datasets``). Each row holds a situation and its
reference perspectives; the prompt is the paper's ``PROMPT_TEMPLATE`` as the user turn of the
tokenizer's chat template (generation prompt appended).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from opgrpo_fast.config import PROMPT_TEMPLATE
from opgrpo_fast.data_io import DataError, check_references, iter_rows


@dataclass
class Example:
    situation: str
    references: list[str] | str
    summary: str | None
    where: str
    completion: str | None = None  # "file:line", for error messages


def load_examples(cfg) -> list[Example]:
    """All rows of ``cfg.data`` (a DataConfig) as Examples; errors name the file and line."""
    path = cfg.resolved_path
    sf, rf, mf = cfg.situation_field, cfg.references_field, cfg.summary_field
    rows: list[tuple[str, dict]] = []
    if Path(path).suffix.lower() in (".jsonl", ".csv", ".json"):
        rows = [(f"{path}:{n}", r) for n, r in iter_rows(path, required=(sf, rf))]
    else:  # a saved HF dataset folder or a hub dataset (offline caches work)
        import datasets

        ds = datasets.load_from_disk(path) if Path(path).is_dir() else datasets.load_dataset(path, split="train")
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
        missing = [c for c in (sf, rf) if c not in ds.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {ds.column_names}")
        rows = [(f"{path}:row {i}", r) for i, r in enumerate(ds)]
    out = []
    for where, row in rows[: cfg.max_rows]:
        situation = row[sf]
        if not isinstance(situation, str) or not situation.strip():
            raise DataError(f"{where}: '{sf}' must be a non-empty string")
        refs = row[rf]
        if isinstance(refs, str) and refs.lstrip().startswith("["):  # CSV cells holding a JSON list
            import json

            try:
                refs = json.loads(refs)
            except json.JSONDecodeError:
                pass
        file, _, line = where.rpartition(":")
        refs = check_references(file, line, refs)
        summary, completion = row.get(mf), row.get(cfg.completion_field)
        out.append(Example(situation.strip(), refs, summary if isinstance(summary, str) and summary.strip() else None,
                           where, completion if isinstance(completion, str) and completion.strip() else None))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def user_prompt(situation: str) -> str:
    """The paper's instruction (the reward extracts the situation back out of it for keyword masking)."""
    return PROMPT_TEMPLATE.format(situation=situation)


def chat_prompt(tokenizer, situation: str) -> str:
    """The prompt as the model sees it: the chat template's user turn + the assistant header."""
    msgs = [{"role": "user", "content": user_prompt(situation)}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return user_prompt(situation)


def filter_long_prompts(examples: list[Example], tokenizer, max_len: int) -> tuple[list[Example], int]:
    """Drop prompts over ``max_len`` tokens (truncating would cut the instruction); returns (kept, dropped)."""
    kept = [e for e in examples if len(tokenizer(chat_prompt(tokenizer, e.situation),
                                                 add_special_tokens=False)["input_ids"]) <= max_len]
    if not kept:
        raise DataError(f"every prompt is longer than rollout.max_prompt_length={max_len} tokens")
    return kept, len(examples) - len(kept)


class PromptSampler:
    """A global, seeded order of prompts (reshuffled every epoch); each step takes the next
    ``prompts_per_step`` and rank r keeps its contiguous share — prompts are sharded, never the G
    completions of one prompt, so every group is scored and normalised whole on one rank. The
    order does not depend on the world size, so a run resumes on a different number of ranks."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next_indices(self, count: int, rank: int = 0, world: int = 1) -> list[int]:
        out = []
        while len(out) < count:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            take = min(count - len(out), self.n - self.cursor)
            out += self._order[self.cursor:self.cursor + take]
            self.cursor += take
        per = count // world
        return out[rank * per:(rank + 1) * per]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"checkpoint was taken on {state['n']} prompts, the data now has {self.n}")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._perm(self.epoch)
