"""Score a small bundled set of rollouts and print the reward table.

    python -m opgrpo_fast.demo [--data rollouts.jsonl] [--group-size 4] [--encoder PATH]

Rows: {"situation", "references", "completion"}; ``group-size`` consecutive rows form one
prompt's group (as in a GRPO rollout), and advantages are normalised within each group.
"""
from __future__ import annotations

import argparse
import time
from importlib import resources

from .data_io import DataError, check_references, iter_rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="rollouts JSONL (default: the bundled demo set)")
    ap.add_argument("--group-size", type=int, default=4, help="completions per prompt (num_generations)")
    ap.add_argument("--encoder", default=None, help="similarity estimator path/name (default: offline MiniLM)")
    ap.add_argument("--scale", default="group", choices=["group", "batch", "none"], help="advantage scaling")
    args = ap.parse_args(argv)

    path = args.data or resources.files("opgrpo_fast").joinpath("data/demo_rollouts.jsonl")
    prompts, comps, refs = [], [], []
    for lineno, row in iter_rows(path, required=("situation", "references", "completion")):
        refs.append(check_references(path, lineno, row["references"]))
        prompts.append(row["situation"])
        comps.append(row["completion"])
    if len(comps) % args.group_size:
        raise DataError(f"{path}: {len(comps)} rollouts do not split into groups of {args.group_size}")

    from . import OvertonReward

    t0 = time.perf_counter()
    reward = OvertonReward(encoder=args.encoder)
    t1 = time.perf_counter()
    b, adv = reward.score_with_advantages(prompts, comps, refs, group_size=args.group_size, scale=args.scale)
    t2 = time.perf_counter()

    head = f"{'#':>3} {'situation':<32} {'total':>6} {'cov':>4} {'rate':>5} {'uniq':>5} {'fmt':>4} {'tag':>5} {'adv':>6}  completion"
    print(head)
    print("-" * len(head))
    for i, row in enumerate(b.rows()):
        if i and i % args.group_size == 0:
            print()
        first = comps[i].replace("\n", " ")[:48]
        print(f"{i:>3} {prompts[i][:32]:<32} {row['total']:6.3f} {row['coverage']:4.0f} {row['coverage_rate']:5.2f} "
              f"{row['uniqueness']:5.2f} {row['format']:4.1f} {row['tag']:5.1f} {adv[i].item():6.2f}  {first}")
    m = b.means()
    print(f"\nmean total {m['total']:.3f} | coverage rate {m['coverage_rate']:.2f} | uniqueness rate "
          f"{m['uniqueness_rate']:.2f} | {len(comps)} completions scored in {t2 - t1:.2f} s "
          f"(encoder load {t1 - t0:.1f} s)")


if __name__ == "__main__":
    main()
