"""Answer generation for evaluation: batched sampling with left padding, tag-gated regeneration,
and a JSONL log written row by row so a crash loses nothing already generated (a re-run resumes).

Response rows: ``{"id", "situation", "model", "prompt_style", "prompt", "response", "attempts",
"tag_ok", "n_tokens", "finished"}`` (``finished``: the model stopped by itself rather than at the
token limit).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..config import PROMPT_TEMPLATE
from ..data_io import DataError
from ..text import tag_gate
from . import EvalItem

# The baseline that is *told* what OP-GRPO learns to do unprompted: several perspectives in the
# reward's format. Tags are spelled out so the format gate measures compliance, not guessing.
EXPLICIT_TEMPLATE = (
    "Provide a structured comprehensive analysis and your opinions on this topic: {situation}\n\n"
    "Cover as many distinct perspectives as are relevant. Write each perspective on its own line as "
    "\"In the perspective of X, ...\" (X names the perspective), all inside <core perspectives> and "
    "</core perspectives>, then a brief <summary>...</summary> that names every perspective.\n\n"
)
PROMPT_STYLES = {"implicit": PROMPT_TEMPLATE, "explicit": EXPLICIT_TEMPLATE}


@dataclass
class GenerationConfig:
    """Sampling settings (defaults: the paper's evaluation)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 1200
    batch_size: int = 8
    max_retries: int = 4
    """Regenerations of an answer whose <core perspectives>/<summary> tags do not parse; after
    that the last answer is kept as it is."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_retries < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, max_retries >= 0")


def build_prompt(situation: str, style: str = "implicit") -> str:
    """The user message for ``style`` ('implicit': the training template; 'explicit': the baseline)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    return PROMPT_STYLES[style].format(situation=situation)


# ---------------------------------------------------------------------------------- response log
def read_responses(path: str | Path, repair: bool = False) -> dict[str, dict]:
    """Response rows by id. Rows need "id" and a string "response" (DataError naming file:line).
    A last line cut off mid-write (no newline, not JSON) is what a crash leaves: with ``repair``
    it is dropped and the file truncated to its last whole row, else it is an error too."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such responses file")
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    offset = 0
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        line = raw.decode("utf-8", errors="replace")
        offset += len(raw)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if repair and offset == len(data) and not line.endswith("\n"):
                with path.open("r+b") as f:
                    f.truncate(len(data) - len(raw))
                break
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("response"), str):
            raise DataError(f"{path}:{lineno}: a response row needs an 'id' and a string 'response'")
        rows[str(row["id"])] = row  # a later row for the same id wins (a re-generated answer)
    return rows


class ResponseLog:
    """Append-only JSONL; every row is flushed and fsynced before the next answer is generated."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size:
            with self.path.open("rb") as f:  # a hand-written file may end without one: never glue rows
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._f = self.path.open("a", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------------------- sampling
class Generator:
    """A causal LM + tokenizer that samples answers for a batch of user messages."""

    def __init__(self, model, tokenizer, cfg: GenerationConfig):
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self.tok.padding_side = "left"  # decoder-only batches must end where generation starts
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tok.eos_token_id is not None:
            eos.append(self.tok.eos_token_id)
        if not eos:
            raise ValueError("the model defines no eos token: generation could never stop")
        self.stop_ids = sorted(set(eos))

    @classmethod
    def load(cls, name_or_path: str, cfg: GenerationConfig, device: str | None = None,
             trust_remote_code: bool = False) -> "Generator":
        from transformers import AutoModelForCausalLM

        from .loading import from_pretrained, load_tokenizer, resolve_device

        dev = resolve_device(device)
        model = from_pretrained(AutoModelForCausalLM, name_or_path, dev, trust_remote_code)
        return cls(model, load_tokenizer(name_or_path, trust_remote_code), cfg)

    def chat_text(self, user_message: str) -> str:
        """The user turn through the tokenizer's chat template (base models without one get the raw text)."""
        if not getattr(self.tok, "chat_template", None):
            return user_message
        return self.tok.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                            add_generation_prompt=True)

    def __call__(self, user_messages: Sequence[str]) -> list[tuple[str, int, bool]]:
        """(answer text, generated tokens up to the first stop token, stopped by itself) each."""
        import torch

        texts = [self.chat_text(m) for m in user_messages]
        # the chat template already holds any BOS; adding special tokens again would double it
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        c = self.cfg
        sampling = (dict(do_sample=True, temperature=c.temperature, top_p=c.top_p) if c.temperature > 0
                    else dict(do_sample=False))
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=c.max_new_tokens, pad_token_id=self.tok.pad_token_id,
                                      eos_token_id=self.stop_ids, **sampling)
        gen = out[:, enc["input_ids"].shape[1]:].cpu()
        stop = torch.isin(gen, torch.tensor(self.stop_ids + [self.tok.pad_token_id]))
        results = []
        for row, st in zip(gen, stop):
            hit = st.nonzero()
            n = int(hit[0, 0]) if len(hit) else row.shape[0]
            results.append((self.tok.decode(row[:n], skip_special_tokens=True).strip(), n, bool(len(hit))))
        return results


def generate_responses(items: Sequence[EvalItem], generate: Callable[[list[str]], list[tuple[str, int, bool]]],
                       out_path: str | Path, cfg: GenerationConfig, style: str = "implicit", model_name: str = "",
                       resume: bool = True, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Answer every item (resuming from ``out_path`` when it already holds some), regenerating
    untagged answers up to ``cfg.max_retries`` times. Returns the rows by id."""
    import torch

    out_path = Path(out_path)
    done: dict[str, dict] = {}
    if out_path.exists():
        if not resume:
            out_path.unlink()
        else:
            done = read_responses(out_path, repair=True)
            for row in done.values():
                if (row.get("model"), row.get("prompt_style")) != (model_name, style):
                    raise ValueError(
                        f"{out_path} holds answers of model {row.get('model')!r} with prompt style "
                        f"{row.get('prompt_style')!r}, not {model_name!r}/{style!r}: use --overwrite or another --out")
    todo = sorted((it for it in items if it.id not in done), key=lambda it: len(it.situation))
    if done:
        log(f"resuming: {len(items) - len(todo)} of {len(items)} answers already in {out_path}")
    torch.manual_seed(cfg.seed)
    with ResponseLog(out_path) as sink:
        for start in range(0, len(todo), cfg.batch_size):
            pending = todo[start:start + cfg.batch_size]
            for attempt in range(1, cfg.max_retries + 2):
                outputs = generate([build_prompt(it.situation, style) for it in pending])
                retry = []
                for it, (text, n_tokens, finished) in zip(pending, outputs):
                    ok = tag_gate(text)[0]
                    if ok or attempt == cfg.max_retries + 1:
                        row = dict(id=it.id, situation=it.situation, model=model_name, prompt_style=style,
                                   prompt=build_prompt(it.situation, style), response=text, attempts=attempt,
                                   tag_ok=ok, n_tokens=n_tokens, finished=finished)
                        sink.write(row)
                        done[it.id] = row
                    else:
                        retry.append(it)
                pending = retry
                if not pending:
                    break
            log(f"generated {min(start + cfg.batch_size, len(todo))}/{len(todo)}")
    return done
