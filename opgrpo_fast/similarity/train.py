"""Fine-tune a Sentence Transformer on (anchor, positive, negative) triplets.

    python -m opgrpo_fast.similarity.train --triplets T.jsonl --base MODEL --out DIR

sentence-transformers' own ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``
(scale 70): each anchor must score its positive above its own hard negative AND above every other
row's positive and negative in the batch (in-batch negatives), so batches are drawn without
duplicate texts. Defaults are the paper's: batch 32, 2 epochs, lr 2.1457e-5, warmup ratio 0.0325,
bf16/fp16 mixed precision on CUDA (fp32 on CPU). A seeded 10% of the triplets is held out and
scored before and after training (loss + ``TripletEvaluator`` accuracy).

DIR gets a normal SentenceTransformer folder (safetensors) that ``OvertonReward(encoder=DIR)``
loads, plus ``train_log.json`` (the trainer's ``log_history`` with the training loss, the eval
before/after and the run's settings) and ``eval_triplets.jsonl`` (the held-out rows).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from ..data_io import DataError, iter_rows
from .common import cli_errors, load_model

FIELDS = ("anchor", "positive", "negative")
DEFAULTS = dict(epochs=2.0, batch_size=32, lr=2.1457e-5, warmup_ratio=0.0325, scale=70.0, eval_split=0.1, seed=0)


def load_triplets(path: str | Path) -> list[dict]:
    """Rows with non-empty string anchor / positive / negative (DataError naming file:line otherwise)."""
    rows = []
    for lineno, row in iter_rows(path, required=FIELDS):
        bad = [k for k in FIELDS if not isinstance(row[k], str) or not row[k].strip()]
        if bad:
            raise DataError(f"{path}:{lineno}: {bad} must be non-empty strings")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no triplets")
    return rows


def split_rows(rows: list[dict], eval_split: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then the last ``eval_split`` share (at least 1 row when the share is > 0 and
    there are >= 2 rows) is held out. One triplet per situation, so this is a split by situation."""
    if not 0.0 <= eval_split < 1.0:
        raise ValueError(f"eval_split must be in [0, 1), got {eval_split}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(eval_split * len(rows)))) if eval_split > 0 else 0
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _precision(precision: str, device: torch.device) -> dict:
    """'auto': bf16 where CUDA has it, else fp16 on CUDA; fp32 on CPU (CPU autocast training is
    slower than fp32 on CPUs without AMX, and fp32 keeps the tiny test runs exact)."""
    if precision == "auto":
        if device.type != "cuda":
            return {}
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("fp16", "bf16") and device.type != "cuda":
        raise ValueError(f"--precision {precision} needs a CUDA device; use fp32 on {device.type}")
    return {"fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True}}[precision]


def _dataset(rows: list[dict]):
    from datasets import Dataset

    # column order matters to the loss: (anchor, positive, negative)
    return Dataset.from_dict({k: [r[k] for r in rows] for k in FIELDS})


def train(triplets: str | Path | list[dict], base=None, out: str | Path = "runs/estimator", *,
          epochs: float = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
          warmup_ratio: float = DEFAULTS["warmup_ratio"], scale: float = DEFAULTS["scale"], max_steps: int = -1,
          eval_split: float = DEFAULTS["eval_split"], seed: int = DEFAULTS["seed"], precision: str = "auto",
          logging_steps: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Fine-tune ``base`` (path / name / None = offline MiniLM) on triplets (a JSONL path or rows)
    and save to ``out``. Returns the summary also written to ``out/train_log.json``."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import set_seed

    try:  # sentence-transformers >= 6 layout
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer import losses
        from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator
    except ImportError:  # 3.x - 5.x
        from sentence_transformers import losses
        from sentence_transformers.evaluation import TripletEvaluator
        from sentence_transformers.training_args import BatchSamplers

    rows = load_triplets(triplets) if isinstance(triplets, (str, Path)) else list(triplets)
    train_rows, eval_rows = split_rows(rows, eval_split, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)  # the trainer re-seeds too; this one covers model loading (e.g. fresh pooling heads)
    model = load_model(base, device)
    dev = torch.device(model.device)
    loss = losses.MultipleNegativesRankingLoss(model, scale=scale)
    evaluator = (TripletEvaluator([r["anchor"] for r in eval_rows], [r["positive"] for r in eval_rows],
                                  [r["negative"] for r in eval_rows], name="heldout", batch_size=batch_size,
                                  write_csv=False) if eval_rows else None)
    steps_per_epoch = -(-len(train_rows) // batch_size)
    total_steps = max_steps if max_steps > 0 else max(1, round(steps_per_epoch * epochs))
    work = out / "_trainer"  # the trainer wants an output_dir; checkpoints are off, so it stays empty
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work), num_train_epochs=epochs, max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, learning_rate=lr,
        warmup_steps=warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="no", save_strategy="no", report_to="none",
        logging_steps=logging_steps or max(1, total_steps // 50), logging_first_step=True, seed=seed, data_seed=seed,
        disable_tqdm=not progress, dataloader_num_workers=0, use_cpu=dev.type == "cpu", **_precision(precision, dev))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=_dataset(train_rows),
                                         eval_dataset=_dataset(eval_rows) if eval_rows else None, loss=loss,
                                         evaluator=evaluator)
    before = trainer.evaluate() if eval_rows else {}
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    after = trainer.evaluate() if eval_rows else {}
    model.save(str(out), safe_serialization=True)
    shutil.rmtree(work, ignore_errors=True)
    if eval_rows:
        with (out / "eval_triplets.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows)
    train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "base": str(base) if base is not None and not hasattr(base, "encode") else "default" if base is None else "object",
        "n_train": len(train_rows), "n_eval": len(eval_rows), "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2), "train_loss_mean": result.training_loss,
        "first_loss": train_losses[0] if train_losses else None, "last_loss": train_losses[-1] if train_losses else None,
        "eval_before": before, "eval_after": after,
        "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
                     "scale": scale, "max_steps": max_steps, "eval_split": eval_split, "seed": seed,
                     "precision": precision, "device": str(dev)},
        "log_history": trainer.state.log_history,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m opgrpo_fast.similarity.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--triplets", required=True, help="JSONL rows with anchor, positive, negative")
    ap.add_argument("--base", default=None, help="SentenceTransformer path or name (default: offline all-MiniLM-L6-v2)")
    ap.add_argument("--out", required=True, help="output folder (SentenceTransformer layout + train_log.json)")
    ap.add_argument("--epochs", type=float, default=DEFAULTS["epochs"])
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    ap.add_argument("--warmup-ratio", type=float, default=DEFAULTS["warmup_ratio"])
    ap.add_argument("--scale", type=float, default=DEFAULTS["scale"], help="MultipleNegativesRankingLoss scale (1/temperature)")
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (overrides --epochs)")
    ap.add_argument("--eval-split", type=float, default=DEFAULTS["eval_split"], help="held-out share of the triplets")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                    help="auto: bf16 (or fp16) on CUDA, fp32 on CPU")
    ap.add_argument("--logging-steps", type=int, default=None, help="log the loss every N steps (default: ~50 logs per run)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: the library's choice)")
    args = ap.parse_args(argv)
    s = train(args.triplets, args.base, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              warmup_ratio=args.warmup_ratio, scale=args.scale, max_steps=args.max_steps, eval_split=args.eval_split,
              seed=args.seed, precision=args.precision, logging_steps=args.logging_steps, device=args.device)
    acc = lambda d: d.get("eval_heldout_cosine_accuracy")  # noqa: E731
    print(f"trained {s['steps']} steps on {s['n_train']} triplets in {s['train_seconds']:.1f} s; loss "
          f"{s['first_loss']} -> {s['last_loss']}; held-out ({s['n_eval']}) loss "
          f"{s['eval_before'].get('eval_loss')} -> {s['eval_after'].get('eval_loss')}, accuracy {acc(s['eval_before'])} -> "
          f"{acc(s['eval_after'])}; saved to {args.out}")
    return s


if __name__ == "__main__":
    with cli_errors():
        main()
