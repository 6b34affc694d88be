"""SFT warm start before GRPO (the published recipe): teach the answer format on reference answers.

    python -m opgrpo_fast.sft --output-dir runs/tiny-sft [--max-steps 300] [--model.name_or_path ...]
          [--data.path rows.jsonl] [--config my_sft.yaml]

Target of a row (the user turn is the same chat prompt GRPO samples from):

    <core perspectives>
    {reference lines, one per line}
    </core perspectives>

    <summary>
    {summary}
    </summary><eos>

``summary`` comes from the data's summary column when present; otherwise it is built from the
perspective names ("Weighing A, B and C together: each raises a real concern, and a balanced view
keeps all of them in mind.") — every name appears in it, which is what the reward's format rule checks.
A row with a ``completion`` column is trained on that text verbatim instead.
Prompt tokens are masked out of the loss (-100 labels). The result is an HF folder (safetensors +
tokenizer) written atomically, which ``--model.name_or_path`` of a GRPO run loads.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .text import NAME_RE, normalize_references
from .train.config import DataConfig, ModelConfig, _check, load_config
from .train.data import Example, chat_prompt, load_examples


@dataclass
class SFTConfig:
    seed: int = 0
    """Seeds init (random_init models) and batch order."""
    output_dir: str = "runs/tiny-sft"
    """The HF folder written at the end (plus sft_metrics.jsonl inside)."""
    max_steps: int = 300
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine to 10% after a 5% warmup)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global grad-norm clip."""
    max_length: int = 512
    """Prompt + target tokens; longer rows are truncated on the right (the loss only sees the kept part)."""
    log_every: int = 25
    """Print the loss every N steps."""
    threads: int | None = None
    """torch intra-op CPU threads (None: torch's default; see TrainConfig.threads)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "max_length", "log_every"):
            _check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


def default_summary(refs) -> str:
    """A short summary naming every perspective (used when the data has no summary column)."""
    names = []
    for r in normalize_references(refs):
        m = NAME_RE.search(r)
        if m and m.group(1).strip() not in names:
            names.append(m.group(1).strip())
    if not names:
        return "Several perspectives matter here, and a balanced view keeps all of them in mind."
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"Weighing {joined} together: each raises a real concern, and a balanced view keeps all of them in mind."


def sft_target(ex: Example) -> str:
    if ex.completion:  # a ready answer in the data (data.completion_field)
        return ex.completion.strip()
    lines = "\n".join(r.strip() for r in normalize_references(ex.references))
    summary = ex.summary or default_summary(ex.references)
    return f"<core perspectives>\n{lines}\n</core perspectives>\n\n<summary>\n{summary}\n</summary>"


def encode(tok, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the prompt masked (-100) and the EOS appended to the target."""
    p = tok(chat_prompt(tok, ex.situation), add_special_tokens=False)["input_ids"]
    t = tok(sft_target(ex), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (p + t)[:max_length]
    labels = ([-100] * len(p) + t)[:max_length]
    return ids, labels


def collate(rows, pad_id: int) -> dict:
    width = max(len(i) for i, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):  # right padding: positions are 0..n-1 without position_ids
        ids[r, :len(i)], labels[r, :len(lab)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_sft(cfg: SFTConfig, verbose: bool = True) -> Path:
    from .train.model import enable_activation_checkpointing, load_model, load_tokenizer

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(cfg.model)
    rows = [encode(tok, ex, cfg.max_length) for ex in load_examples(cfg.data)]
    model = load_model(cfg.model, tok).to(device)
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.max_steps // 20)

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, cfg.max_steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    use_bf16 = cfg.model.bf16 and device.type == "cuda"
    out = Path(cfg.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = []
    t0 = time.perf_counter()
    for step in range(1, cfg.max_steps + 1):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(rows), generator=g).tolist()
        batch = collate([rows[i] for i in order[:cfg.batch_size]], tok.pad_token_id)
        order = order[cfg.batch_size:]
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append({"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0]})
        if verbose and (step % cfg.log_every == 0 or step == cfg.max_steps):
            print(f"[sft] step {step}/{cfg.max_steps} loss {float(loss):.4f} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
    tmp = out.with_name(".tmp-" + out.name)
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    import json

    (tmp / "sft_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # a killed run never leaves a half-written folder under the final name
    return out


def main(argv=None) -> None:
    train_sft(load_config(argv, cls=SFTConfig, default_preset=None))


if __name__ == "__main__":
    main()
