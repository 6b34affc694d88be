"""``python -m opgrpo_fast.train.demo``: the tiny-cpu pipeline end to end in a few CPU minutes.

1. SFT warm start of the tiny Qwen2 on the bundled situations. Each situation appears twice: with the
   full tagged answer (``<core perspectives>…<summary>…``, built from its references) and with a
   plain one-line answer (its summary, no tags). The warm-started policy therefore emits both styles.
2. GRPO with the real Overton reward (offline MiniLM): the plain style fails the tag gate (total
   ≈ 0.1), the tagged style earns format and uniqueness (≈ 0.5 and up), so the reward curve shows the
   policy moving to the tagged format within a few dozen steps.
3. metrics.jsonl, TensorBoard scalars and reward_curves.png under the output dir.

    python -m opgrpo_fast.train.demo [--output-dir runs/demo] [--sft-steps 300] [--grpo-steps 30] [--encoder stub]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..sft import SFTConfig, train_sft
from .config import BUNDLED_DATA, DataConfig, load_config
from .data import load_examples
from .loop import train
from .metrics import plot_rewards, read_metrics


def two_style_data(path: Path) -> Path:
    """The bundled rows, each followed by a copy whose SFT target is the plain summary."""
    with path.open("w") as f:
        for ex in load_examples(DataConfig(path=str(BUNDLED_DATA))):
            row = {"situation": ex.situation, "references": ex.references, "summary": ex.summary}
            f.write(json.dumps(row) + "\n")
            f.write(json.dumps({**row, "completion": ex.summary}) + "\n")
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output-dir", default="runs/demo")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--grpo-steps", type=int, default=30)
    ap.add_argument("--encoder", default=None, help="'stub' (tests' deterministic encoder) or a path; default MiniLM")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = two_style_data(out / "sft_data.jsonl")
    print(f"[demo] 1/2 SFT warm start: {args.sft_steps} steps on {data}", flush=True)
    sft_dir = train_sft(load_config(["--output-dir", str(out / "sft"), "--max-steps", str(args.sft_steps),
                                     "--data.path", str(data), "--threads", "1", "--log-every", "50"],
                                    cls=SFTConfig, default_preset=None))
    t1 = time.perf_counter()
    grpo = ["--output-dir", str(out / "grpo"), "--max-steps", str(args.grpo_steps), "--model.name_or_path",
            str(sft_dir), "--data.path", str(data), "--rollout.num_generations", "8",
            "--rollout.prompts_per_step", "6", "--rollout.micro_batch_size", "24"]
    if args.encoder == "stub":
        grpo += ["--reward.encoder", "python:tests.stub_encoder:StubEncoder"]
    elif args.encoder:
        grpo += ["--reward.encoder", args.encoder]
    print(f"[demo] 2/2 GRPO: {args.grpo_steps} steps (tiny-cpu preset)", flush=True)
    train(load_config(grpo))
    t2 = time.perf_counter()
    png = plot_rewards(out / "grpo" / "metrics.jsonl", out / "reward_curves.png", title="OP-GRPO tiny-cpu demo")
    rows = read_metrics(out / "grpo" / "metrics.jsonl")
    k = max(1, min(5, len(rows) // 3))
    first = sum(r["reward/total"] for r in rows[:k]) / k
    last = sum(r["reward/total"] for r in rows[-k:]) / k
    tps = sum(r["tokens_per_s"] for r in rows) / len(rows)
    result = {"sft_seconds": round(t1 - t0, 1), "grpo_seconds": round(t2 - t1, 1), "reward_first": round(first, 4),
              "reward_last": round(last, 4), "tag_pass_first": rows[0]["reward/tag_pass"],
              "tag_pass_last": rows[-1]["reward/tag_pass"], "rollout_tokens_per_s": round(tps, 1),
              "metrics": str(out / "grpo" / "metrics.jsonl"), "plot": str(png)}
    print(f"[demo] mean reward first {k} steps {first:.3f} → last {k} steps {last:.3f}; SFT {t1 - t0:.0f}s, "
          f"GRPO {t2 - t1:.0f}s; metrics {result['metrics']}; plot {png}", flush=True)
    (out / "demo_summary.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
