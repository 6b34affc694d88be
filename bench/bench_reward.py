"""End-to-end reward: 64 prompts × 10 completions from ValuePrism vs the published code's structure.

Baseline (opgrpo_fast.published): per completion one encoder call for references + candidates and a
second for the candidates (uniqueness), numpy greedy loop; fp32. Fast path: OvertonReward as
shipped (one deduplicated, length-sorted encoder pass; bf16 autocast where the CPU has it; batched
similarity + C++ greedy). Same encoder weights. The completions are built so that lines rarely
repeat across completions (each line is perturbed per completion): no dedupe windfall.

Target (2-core CPU): fast ≥ 5× baseline with ≥ 99% of completions scored identically.
Run: make bench   (or: pytest bench/bench_reward.py --benchmark-only)
Env: BENCH_PROMPTS (default 64), BENCH_GENERATIONS (default 10).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from opgrpo_fast.text import strip_opener

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "valueprism_dev.jsonl"
N_PROMPTS = int(os.environ.get("BENCH_PROMPTS", 64))
G = int(os.environ.get("BENCH_GENERATIONS", 10))
KEYS = ("total", "coverage", "uniqueness", "format", "tag")


def _perturb(sentence: str, rng: random.Random) -> str:
    """Drop / swap a few words so the same idea reads differently in each completion."""
    words = sentence.split()
    for _ in range(rng.randint(1, 3)):
        if len(words) > 6:
            words.pop(rng.randrange(2, len(words)))
    if len(words) > 8 and rng.random() < 0.5:
        i = rng.randrange(3, len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_batch(rows: list[dict], g: int, seed: int = 0):
    """Sampled-text-like completions: a random subset of the references, paraphrased by word
    drops, some perspectives from other situations, occasional near-repeats and missing tags."""
    rng = random.Random(seed)
    prompts, comps, refs = [], [], []
    for row in rows:
        for _ in range(g):
            own = rng.sample(row["references"], k=rng.randint(1, len(row["references"])))
            other = rng.choice(rows)["references"]
            lines = [f"In the perspective of {rng.choice(['Care', 'Fairness', 'Duty', 'Liberty', 'Harm'])} "
                     f"{rng.randint(0, 99)}, {_perturb(strip_opener(s), rng)}" for s in own]
            lines += [_perturb(s, rng) for s in rng.sample(other, k=min(len(other), rng.randint(0, 2)))]
            if rng.random() < 0.2:
                lines.append(_perturb(lines[0], rng))  # near-repeat inside the answer
            rng.shuffle(lines)
            body = "\n".join(lines)
            summary = "Weighing " + ", ".join(w.split(",")[0][22:] for w in lines[:3]) + "."
            comps.append(body if rng.random() < 0.1 else
                         f"<core perspectives>\n{body}\n</core perspectives>\n\n<summary>\n{summary}\n</summary>")
            prompts.append(row["situation"])
            refs.append(row["references"])
    return prompts, comps, refs


@pytest.fixture(scope="module")
def batch():
    if not DATA.exists():
        pytest.skip(f"{DATA} not present (ValuePrism is read from ../shared at run time, never bundled)")
    rows = [json.loads(line) for line in DATA.open()][:N_PROMPTS]
    return build_batch(rows, G)


@pytest.fixture(scope="module")
def model():
    from opgrpo_fast.encoder import load_encoder

    return load_encoder(None)


@pytest.fixture(scope="module")
def outputs():
    return {}


def test_baseline_published_structure(benchmark, batch, model, outputs):
    from opgrpo_fast.published import score_published

    benchmark.group = "reward_end_to_end"
    benchmark.extra_info.update(role="baseline", completions=len(batch[1]))
    outputs["baseline"] = benchmark.pedantic(lambda: score_published(model, *batch), rounds=1, iterations=1)


@pytest.mark.parametrize("encode_dtype", ["float32", "auto"])
def test_fast_reward(benchmark, batch, model, outputs, encode_dtype):
    from opgrpo_fast import OvertonReward

    reward = OvertonReward(encoder=model, encode_dtype=encode_dtype)
    reward.score(*[x[:20] for x in batch])  # warm-up (thread pools, regex caches)

    def run():
        reward.clear_cache()  # every timed call does all the work
        return reward.score(*batch)

    benchmark.group = "reward_end_to_end"
    out = benchmark.pedantic(run, rounds=3, iterations=1)
    before = reward.store.encoded_strings
    run()
    benchmark.extra_info.update(completions=len(batch[1]), autocast=str(reward.store.autocast),
                                encoded_strings_per_call=reward.store.encoded_strings - before)
    if "baseline" in outputs:
        base = outputs["baseline"]
        rows = out.rows()
        same = sum(all(abs(rows[i][k] - base[i][k]) < 1e-6 for k in KEYS) for i in range(len(rows)))
        benchmark.extra_info["identical_share"] = same / len(rows)
        assert same / len(rows) >= 0.99, f"only {same}/{len(rows)} completions scored identically"
