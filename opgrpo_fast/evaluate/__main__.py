"""Evaluate a model (or saved answers) on the Overton benchmark.

    python -m opgrpo_fast.evaluate --model PATH_OR_NAME --data FILE --out DIR
        [--prompt-style implicit|explicit] [--nli-model PATH] [--encoder DIR]
        [--judge URL --judge-model NAME] [--responses FILE] [--limit N]

Writes DIR/responses.jsonl (as it generates; a re-run resumes), DIR/results.json, DIR/results.md
and DIR/scores.jsonl. With ``--responses FILE`` nothing is generated: the answers are re-scored.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..data_io import DataError
from . import EvalItem, load_items
from .generate import PROMPT_STYLES, GenerationConfig, Generator, generate_responses, read_responses
from .nli import ACCURACY_THRESHOLD, DEFAULT_NLI_MODEL


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m opgrpo_fast.evaluate", description=__doc__.splitlines()[0])
    g = ap.add_argument_group("inputs")
    g.add_argument("--data", required=True, help="JSONL/CSV rows {situation, references[, id]}")
    g.add_argument("--model", help="causal LM to generate with (path or hub name)")
    g.add_argument("--responses",
                   help="score these saved answers (JSONL rows {id, response}) instead of generating")
    g.add_argument("--limit", type=int, default=None, help="only the first N data rows")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--name", default=None, help="run name in reports (default: model folder + prompt style)")
    g = ap.add_argument_group("generation")
    g.add_argument("--prompt-style", choices=sorted(PROMPT_STYLES), default="implicit",
                   help="implicit: the training template; "
                        "explicit: ask for 'In the perspective of X' perspectives")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--max-new-tokens", type=int, default=1200)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-retries", type=int, default=4, help="regenerations of an answer whose tags do not parse")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--overwrite", action="store_true", help="discard DIR/responses.jsonl instead of resuming")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 …")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow model repos' own Python code (off by default)")
    g = ap.add_argument_group("NLI accuracy")
    g.add_argument("--nli-model", default=None,
                   help=f"NLI classifier (default {DEFAULT_NLI_MODEL}; skipped with a warning if it cannot be loaded)")
    g.add_argument("--no-nli", action="store_true")
    g.add_argument("--nli-batch-size", type=int, default=32)
    g.add_argument("--nli-threshold", type=float, default=ACCURACY_THRESHOLD)
    g = ap.add_argument_group("similarity coverage")
    g.add_argument("--encoder", default=None, help="similarity estimator (default: offline all-MiniLM-L6-v2)")
    g.add_argument("--match-threshold", type=float, default=0.7)
    g.add_argument("--no-mask-keywords", action="store_true",
                   help="embed answers without the reward's [KW] masking of situation keywords "
                        "(default: masked, as in training)")
    g.add_argument("--no-coverage", action="store_true")
    g = ap.add_argument_group("LLM judge (optional)")
    g.add_argument("--judge", default=None, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    g.add_argument("--judge-model", default=None)
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--judge-concurrency", type=int, default=8)
    g.add_argument("--judge-timeout", type=float, default=120.0)
    g.add_argument("--judge-attempts", type=int, default=4)
    g.add_argument("--judge-backoff", type=float, default=2.0, help="first retry delay in seconds (doubles per retry)")
    g.add_argument("--judge-json-mode", action="store_true", help="send response_format=json_object")
    return ap


def _answers(args, items: list[EvalItem], generator, log) -> tuple[list[EvalItem], list[dict], dict]:
    """(items that have an answer, their response rows, notes) — generated or read from --responses."""
    notes: dict = {}
    if args.responses:
        rows = read_responses(args.responses)
        kept = [it for it in items if it.id in rows]
        if not kept:
            raise DataError(f"{args.responses}: no response id matches a data id (data ids look like {items[0].id!r})")
        for it in kept:
            sit = rows[it.id].get("situation")
            if isinstance(sit, str) and sit.strip() != it.situation:
                raise DataError(f"{args.responses}: id {it.id!r} answers {sit[:60]!r}, but the data says "
                                f"{it.situation[:60]!r} (wrong --data file?)")
        if len(kept) < len(items):
            log(f"warning: {len(items) - len(kept)} data items have no answer in {args.responses}; scoring {len(kept)}")
        notes["n_without_response"] = len(items) - len(kept)
        picked = [rows[it.id] for it in kept]
        for key in ("model", "prompt_style"):  # describe the run by what produced the answers
            seen = {r.get(key) for r in picked}
            if len(seen) == 1 and None not in seen:
                notes[key] = seen.pop()
        if args.model and any(r.get("n_tokens") is None for r in picked):
            from .loading import load_tokenizer

            tok = load_tokenizer(args.model, args.trust_remote_code)
            for r in picked:
                if r.get("n_tokens") is None:
                    r["n_tokens"] = len(tok(r["response"], add_special_tokens=False)["input_ids"])
        return kept, picked, notes
    cfg = GenerationConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, max_retries=args.max_retries, seed=args.seed)
    notes["generation"] = asdict(cfg)
    t0 = time.perf_counter()
    if generator is None:
        log(f"loading {args.model}")
        generator = Generator.load(args.model, cfg, args.device, args.trust_remote_code)
    rows = generate_responses(items, generator, Path(args.out) / "responses.jsonl", cfg, args.prompt_style,
                              args.model, resume=not args.overwrite, log=log)
    notes["seconds_generation"] = time.perf_counter() - t0
    return items, [rows[it.id] for it in items], notes


def _nli(args, items, responses, scorer, log) -> tuple[dict, list]:
    from .nli import HFEntailmentScorer, nli_scores, summarize

    if scorer is None:
        name = args.nli_model or DEFAULT_NLI_MODEL
        try:
            scorer = HFEntailmentScorer.load(name, args.device, args.nli_batch_size, args.trust_remote_code)
        except RuntimeError as exc:
            if args.nli_model:  # asked for by name: a failure is an error, not a silent skip
                raise
            log(f"warning: NLI skipped: {exc}")
            return {"skipped": f"default NLI model {name} could not be loaded; pass --nli-model PATH"}, []
    t0 = time.perf_counter()
    res = nli_scores([it.references for it in items], responses, scorer)
    summary = summarize([r.score for r in res], args.nli_threshold)
    summary.update(model=getattr(scorer, "name", type(scorer).__name__), seconds=time.perf_counter() - t0)
    return summary, res


def evaluate(args: argparse.Namespace, *, generator: Callable | None = None, nli_scorer=None, reward=None,
             log: Callable[[str], None] = _log) -> dict:
    """Run the whole evaluation for parsed ``args``; the keyword hooks let tests and notebooks pass
    already-built components (any generator callable, NLI scorer, OvertonReward)."""
    if not args.responses and not args.model:
        raise ValueError("pass --model to generate answers, or --responses FILE to score saved ones")
    if args.judge and not args.judge_model:
        raise ValueError("--judge needs --judge-model")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = load_items(args.data, args.limit)
    items, rows, notes = _answers(args, items, generator, log)
    responses = [r["response"] for r in rows]
    per_item = [dict(id=it.id, attempts=r.get("attempts"), n_tokens=r.get("n_tokens")) for it, r in zip(items, rows)]
    results: dict = {}

    if args.no_nli:
        results["nli"] = {"skipped": "--no-nli"}
    else:
        results["nli"], nli_res = _nli(args, items, responses, nli_scorer, log)
        for p, r in zip(per_item, nli_res):
            p.update(nli_score=r.score, nli_per_reference=r.per_reference, n_sentences=r.n_sentences)

    if args.no_coverage:
        results["coverage"] = {"skipped": "--no-coverage"}
    else:
        from .coverage import coverage_scores

        encoder_name = args.encoder or "all-MiniLM-L6-v2"
        if reward is None:
            from .. import OvertonReward

            reward = OvertonReward(encoder=args.encoder, device=None if args.device == "auto" else args.device,
                                   match_threshold=args.match_threshold, mask_keywords=not args.no_mask_keywords,
                                   trust_remote_code=args.trust_remote_code)
        else:
            encoder_name = type(reward.encoder).__name__  # a caller-built reward: name what it holds
        t0 = time.perf_counter()
        results["coverage"], cov_rows = coverage_scores(reward, items, responses, [r.get("n_tokens") for r in rows])
        results["coverage"].update(encoder=encoder_name,
                                   mask_keywords=reward.config.mask_keywords, seconds=time.perf_counter() - t0)
        for p, c in zip(per_item, cov_rows):
            p.update(c)

    if args.judge:
        from .judge import JudgeClient, JudgeConfig, run_judge, summarize_judge

        cfg = JudgeConfig(url=args.judge, model=args.judge_model, api_key=os.environ.get(args.judge_api_key_env),
                          timeout=args.judge_timeout, max_attempts=args.judge_attempts, backoff=args.judge_backoff,
                          concurrency=args.judge_concurrency, json_mode=args.judge_json_mode)
        client = JudgeClient(cfg)
        verdicts = run_judge(client, [it.id for it in items], [it.situation for it in items], responses,
                             out / "judge.jsonl", log=log)
        results["judge"] = dict(summarize_judge(verdicts), model=args.judge_model)
        if results["judge"]["n_missing"]:
            log(f"warning: judge gave no usable verdict for {results['judge']['n_missing']} answers (see judge.jsonl)")
        for p, v in zip(per_item, verdicts):
            p.update(judge_scores=v.get("scores"), judge_overall=v.get("overall"), judge_error=v.get("error"))

    run = dict(model=args.model or str(args.responses), prompt_style=args.prompt_style, data=str(args.data),
               n_items=len(items), responses=str(args.responses or out / "responses.jsonl"),
               created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    run.update(notes)
    run["name"] = args.name or f"{Path(str(run['model']).rstrip('/')).name}-{run['prompt_style']}"
    results["run"] = run
    from .report import markdown_table, write_report

    path = write_report(out, results, per_item)
    log(f"wrote {path}")
    final = json.loads(path.read_text(encoding="utf-8"))
    print(markdown_table([(final["run"]["name"], final["metrics"])]))
    return final


def main(argv: list[str] | None = None, **hooks) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args, **hooks)
    except (DataError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
