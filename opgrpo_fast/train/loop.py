"""The OP-GRPO training loop, top to bottom.

One training step:
  1. rollout   — each rank takes its share of ``prompts_per_step`` prompts and samples G completions
                 per prompt (KV-cached ``generate``; groups stay whole on one rank);
  2. reward    — the Overton reward scores the rank's whole batch in one call; totals are gathered
                 so advantages (group / batch scaled) are the same numbers on any world size;
  3. log-probs — reference model (β > 0) and, when updates go off-policy (several mini-batches or
                 ppo_epochs > 1), the old policy, once per rollout;
  4. update    — per mini-batch: micro-batches of ``micro_batch_size`` sequences, gradients
                 accumulated, one clipped AdamW step (DeepSpeed ZeRO or DDP do the syncing);
  5. metrics and checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from opgrpo_fast.ops import group_advantages

from . import checkpoint as ckpt_io
from . import distributed as dist
from .config import TrainConfig, save_config
from .data import PromptSampler, chat_prompt, filter_long_prompts, load_examples, user_prompt
from .loss import HAVE_LIGER, LOSS_BACKEND, Normalizer, compute_loss
from .metrics import MetricsLogger
from .model import PolicyHead, enable_activation_checkpointing, eos_ids, load_model, load_tokenizer, resolve_attention
from .rollout import generate, sequence_logprobs

REWARD_KEYS = ("total", "coverage", "uniqueness", "format", "tag", "coverage_rate", "uniqueness_rate")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_reward(rc, device):
    """OvertonReward from the config; encoder 'python:module:attr' builds a custom encoder (tests)."""
    from opgrpo_fast import OvertonReward

    enc = rc.encoder
    if isinstance(enc, str) and enc.startswith("python:"):
        mod, _, attr = enc[len("python:"):].partition(":")
        enc = getattr(importlib.import_module(mod), attr)()
    dev = rc.device or (str(device) if device.type == "cuda" else None)
    return OvertonReward(encoder=enc, device=dev, **rc.options)


def build_optimizer(model, oc) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (norm scales, biases), the HF Trainer convention."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": oc.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=oc.lr, betas=oc.betas, eps=oc.eps)


def lr_lambda(oc, total_updates: int):
    def f(update: int) -> float:
        if update < oc.warmup_steps:
            return (update + 1) / (oc.warmup_steps + 1)
        if oc.schedule == "constant":
            return 1.0
        progress = min(1.0, (update - oc.warmup_steps) / max(1, total_updates - oc.warmup_steps))
        return oc.min_lr_ratio + (1 - oc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def batch_sizes(cfg: TrainConfig, world: int) -> dict:
    """Per-rank sizes; every mismatch is an error naming the fields."""
    rc = cfg.rollout
    for name, n in (("prompts_per_step", rc.prompts_per_step), ("prompts_per_minibatch", rc.minibatch_prompts)):
        if n % world:
            raise ValueError(f"config field rollout.{name}={n} must be divisible by the world size {world} "
                             f"(prompts are sharded whole across ranks)")
    mb_seqs = rc.minibatch_prompts // world * rc.num_generations
    micro = min(rc.micro_batch_size, mb_seqs)
    if mb_seqs % micro:
        raise ValueError(f"config field rollout.micro_batch_size={micro} must divide the sequences of a rank's "
                         f"mini-batch ({rc.minibatch_prompts}/{world} prompts × G={rc.num_generations} = {mb_seqs})")
    n_mb = rc.prompts_per_step // rc.minibatch_prompts
    return {"prompts": rc.prompts_per_step // world, "mb_seqs": mb_seqs, "micro": micro, "accum": mb_seqs // micro,
            "n_minibatches": n_mb, "updates_per_step": n_mb * rc.ppo_epochs,
            "off_policy": n_mb > 1 or rc.ppo_epochs > 1}


def train(cfg: TrainConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = dist.init(cfg.distributed)
    out = Path(cfg.output_dir)
    ds = cfg.distributed.zero_stage > 0
    sizes = batch_sizes(cfg, d.world)
    resume_from = ckpt_io.find_checkpoint(out, cfg.resume) if cfg.resume else None
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed)  # same on every rank: identical random init / data order

    # ---- data -------------------------------------------------------------------------------
    tok = load_tokenizer(cfg.model)
    examples, dropped = filter_long_prompts(load_examples(cfg.data), tok, cfg.rollout.max_prompt_length)
    sampler = PromptSampler(len(examples), cfg.seed, cfg.data.shuffle)

    # ---- models -------------------------------------------------------------------------------
    # The policy continues from the checkpoint's HF folder on resume; the reference is always the
    # starting model. DeepSpeed bf16 casts the policy itself; without it weights stay fp32 + autocast.
    policy_cfg = cfg.model if resume_from is None or ds else dataclasses.replace(
        cfg.model, name_or_path=str(resume_from / "hf"), tokenizer=None, random_init=False, config_overrides={})
    lm = load_model(policy_cfg, tok)
    if cfg.model.gradient_checkpointing:
        enable_activation_checkpointing(lm)
    ref = None
    if cfg.loss.beta != 0.0:  # β = 0: no reference model at all (saves a full copy of the weights)
        seed_everything(cfg.seed)  # random_init: the reference must equal the initial policy
        ref = PolicyHead(dist.prepare_reference(load_model(cfg.model, tok), cfg, d))
    total_updates = cfg.max_steps * sizes["updates_per_step"]
    head = PolicyHead(lm)
    optimizer = build_optimizer(head, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, total_updates))
    model, optimizer, scheduler = dist.wrap_policy(head, optimizer, scheduler, cfg, d, sizes["micro"], sizes["accum"])
    lm_head = dist.unwrap(model).lm.lm_head
    eos = eos_ids(lm, tok)
    backend = cfg.loss.backend if cfg.loss.backend != "auto" else (
        "torch" if cfg.distributed.zero_stage == 3 or not HAVE_LIGER else LOSS_BACKEND)
    use_autocast = cfg.model.bf16 and not ds and (d.device.type == "cuda" or torch.backends.mkldnn.is_available())

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()

    reward = build_reward(cfg.reward, d.device)
    start = ckpt_io.load(resume_from, model, optimizer, scheduler, sampler, cfg, d) if resume_from else 0
    if resume_from is None:
        seed_everything(cfg.seed + d.rank)  # ranks sample different completions
    if d.is_main:
        print(f"[opgrpo] preset={cfg.preset} world={d.world} device={d.device} attention="
              f"{resolve_attention(cfg.model.attn_implementation)} loss={backend} zero={cfg.distributed.zero_stage} "
              f"prompts={len(examples)} (dropped {dropped} over max_prompt_length) sizes={sizes}"
              + (f" resumed from {resume_from} (step {start})" if resume_from else ""), flush=True)
    logger = MetricsLogger(out, d.is_main, cfg.max_steps, start, cfg.logging.tensorboard, cfg.logging.progress_bar)
    G, rc = cfg.rollout.num_generations, cfg.rollout

    for step in range(start + 1, cfg.max_steps + 1):
        t0 = time.perf_counter()
        # ---- 1. rollout ---------------------------------------------------------------------------
        batch = [examples[i] for i in sampler.next_indices(rc.prompts_per_step, d.rank, d.world)]
        with dist.gathered_for_generation(model, cfg) as gen_lm, autocast():
            ro = generate(gen_lm, tok, [chat_prompt(tok, e.situation) for e in batch], rc, eos, d.device)
        t1 = time.perf_counter()

        # ---- 2. reward → advantages ------------------------------------------------------------------
        prompts = [user_prompt(e.situation) for e in batch for _ in range(G)]
        refs = [e.references for e in batch for _ in range(G)]
        rb = reward.score(prompts, ro.completions, refs)
        # groups are whole on this rank; gathering the N totals (tiny) makes 'batch' scaling global too
        all_totals = dist.all_gather_cat(rb.total, d)
        adv = group_advantages(all_totals, G, scale=cfg.loss.scale_rewards)
        n_local = len(ro)
        ro.advantages = adv[d.rank * n_local:(d.rank + 1) * n_local].to(d.device)
        t2 = time.perf_counter()

        # ---- 3. reference / old log-probs ---------------------------------------------------------------
        if ref is not None:
            ro.ref_logp = sequence_logprobs(ref, ro, sizes["micro"], rc.temperature, autocast)
        if sizes["off_policy"]:  # else ratio = exp(logp - logp.detach()): one forward saved
            ro.old_logp = sequence_logprobs(model, ro, sizes["micro"], rc.temperature, autocast)

        # ---- 4. policy update -------------------------------------------------------------------------------
        # loss, kl, clipped tokens, grad norm: summed on the device and read once per step, because a
        # float() per micro-batch is a host sync that drains the GPU queue between micro-batches
        sums = torch.zeros(4, dtype=torch.float64, device=d.device)
        no_kl = torch.zeros((), dtype=torch.float64, device=d.device)
        for _epoch in range(rc.ppo_epochs):
            for m in range(sizes["n_minibatches"]):
                lo = m * sizes["mb_seqs"]
                mb_rows = slice(lo, lo + sizes["mb_seqs"])
                tokens = dist.all_reduce_sum(ro.completion_mask[mb_rows].sum().double().cpu(), d)  # host sync
                norm = Normalizer(float(tokens), sizes["mb_seqs"], d.world)
                for k in range(sizes["accum"]):
                    rows = slice(lo + k * sizes["micro"], lo + (k + 1) * sizes["micro"])
                    last = k == sizes["accum"] - 1
                    sync = model.no_sync() if (d.world > 1 and not ds and not last) else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            loss, s = compute_loss(model, lm_head, ro.micro_batch(rows), cfg.loss, norm,
                                                   rc.temperature, backend)
                        if ds:
                            model.backward(loss, scale_wrt_gas=False)  # our loss is already the mini-batch mean
                            model.step()  # DeepSpeed steps optimizer + scheduler only at the accumulation boundary
                        else:
                            loss.backward()
                    sums[:3] += torch.stack([loss.detach().double(), s.get("kl", no_kl).double(),
                                             s["clipped"].double()]).to(sums.device)
                if ds:
                    sums[3] += float(model.get_global_grad_norm() or 0.0)
                else:
                    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
                    sums[3] += gn.detach().double().to(sums.device)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        sums = sums.cpu()  # the step's one host sync for the loss metrics
        t3 = time.perf_counter()

        # ---- 5. metrics (one all-reduce of a small vector) and checkpoints ---------------------------------
        n_tok = ro.completion_mask.sum(-1).double().cpu()
        truncated = (n_tok >= rc.max_completion_length).double()
        local = torch.cat([
            torch.stack([getattr(rb, k).double().sum() for k in REWARD_KEYS]),
            torch.stack([(rb.tag == 0).double().sum(), torch.tensor(float(n_local)), n_tok.sum(), truncated.sum()]),
            sums, torch.tensor([t1 - t0])])
        tot = dist.all_reduce_sum(local, d)
        n, ntok, n_up = tot[8].item(), tot[9].item(), sizes["updates_per_step"]
        metrics = {f"reward/{k}": tot[i].item() / n for i, k in enumerate(REWARD_KEYS)}
        metrics |= {"reward/tag_pass": tot[7].item() / n, "response_length": ntok / n, "truncated": tot[10].item() / n,
                    "loss": tot[11].item() / (d.world * n_up),
                    "kl": tot[12].item() / ntok / rc.ppo_epochs, "clip_frac": tot[13].item() / ntok / rc.ppo_epochs,
                    "grad_norm": tot[14].item() / (d.world * n_up),
                    "lr": scheduler.get_last_lr()[0] if scheduler is not None else cfg.optim.lr,
                    "tokens_per_s": ntok / max(tot[15].item() / d.world, 1e-9),
                    "time/rollout": t1 - t0, "time/reward": t2 - t1, "time/update": t3 - t2,
                    "time/step": time.perf_counter() - t0}
        logger.log(step, metrics)
        if d.is_main and cfg.logging.print_completions:
            for c, r in list(zip(ro.completions, rb.total.tolist()))[:cfg.logging.print_completions]:
                print(f"--- reward {r:.3f}\n{c[:400]}", flush=True)
        if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or (
                step == cfg.max_steps and cfg.checkpoint.save_final):
            ckpt_io.save(out, step, model, optimizer, scheduler, tok, sampler, cfg, d)
    logger.close()
    # replicas must agree after training (DDP / ZeRO bugs show up here first); ZeRO-3 shards differ by design
    fp = torch.tensor([weights_fingerprint(dist.unwrap(model))], dtype=torch.float64)
    prints = dist.all_gather_cat(fp, d).tolist()
    summary = {"output_dir": str(out), "world": d.world, "start_step": start, "final_step": cfg.max_steps,
               "weights_fingerprint_per_rank": prints}
    if d.is_main:
        (out / "run_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def weights_fingerprint(module) -> float:
    """Σ over parameters of Σ w·(1 + position/numel) in float64: equal on replicas holding equal weights."""
    total = 0.0
    for p in module.parameters():
        w = p.detach().double().flatten()
        total += float((w * (1 + torch.arange(w.numel(), dtype=torch.float64) / max(1, w.numel()))).sum())
    return total


def main(argv: list[str] | None = None) -> None:
    import sys

    from .config import load_config

    try:
        cfg = load_config(argv)
    except ValueError as exc:  # a bad flag or value: one clear line, no traceback
        print(f"opgrpo_fast.train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        train(cfg)
    finally:
        dist.cleanup()
