"""Checkpoints: an HF folder (safetensors + tokenizer) the next stage loads directly, plus everything
``--resume`` needs for identical next losses (optimizer, scheduler, per-rank RNG, data position).

    <output_dir>/step-00000040/
        hf/                      model.safetensors, config.json, tokenizer files
        trainer_state.json       step, data sampler position
        optimizer.pt, scheduler.pt   (without DeepSpeed)
        ds/                      DeepSpeed engine checkpoint (ZeRO shards, fp32 master weights)
        rng/rank{r}.pt           torch / CUDA / python / numpy RNG of every rank

Atomicity: everything is written into ``.tmp-step-…`` and renamed into place by rank 0 once every
rank has finished (os.rename within one filesystem is atomic), so a kill mid-save leaves at worst a
stale ``.tmp-`` folder, never a half-written ``step-`` folder that ``latest`` would pick.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .distributed import Dist, barrier, unwrap

STEP_RE = re.compile(r"^step-(\d{8})$")


def step_dir(output_dir, step: int) -> Path:
    return Path(output_dir) / f"step-{step:08d}"


def list_checkpoints(output_dir) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name)), key=lambda p: p.name)


def find_checkpoint(output_dir, resume: str) -> Path:
    """'latest' → the newest complete checkpoint in ``output_dir``; otherwise a checkpoint folder."""
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            raise FileNotFoundError(f"--resume: no checkpoint (step-XXXXXXXX/) in {output_dir}")
        return ckpts[-1]
    p = Path(resume)
    if not (p / "trainer_state.json").exists():
        raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
    return p


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_hf(model, tokenizer, out: Path, d: Dist, zero_stage: int) -> None:
    """One HF folder from the (possibly sharded) policy. ZeRO-3 gathers a 16-bit state dict (a
    collective: every rank must call this); ZeRO-1/2 / DDP ranks hold full weights already."""
    lm = unwrap(model).lm
    state = None
    if zero_stage == 3:
        full = model._zero3_consolidated_16bit_state_dict()
        state = {k.removeprefix("lm."): v for k, v in (full or {}).items()}
    if d.is_main:
        lm.save_pretrained(out, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out)


def save(output_dir, step: int, model, optimizer, scheduler, tokenizer, sampler, cfg, d: Dist) -> Path:
    final = step_dir(output_dir, step)
    tmp = final.with_name(".tmp-" + final.name)
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale one from an earlier crash
        (tmp / "rng").mkdir(parents=True)
    barrier(d)
    torch.save(rng_state(), tmp / "rng" / f"rank{d.rank}.pt")
    if cfg.distributed.zero_stage:
        model.save_checkpoint(str(tmp / "ds"), tag="state")  # collective; also saves the lr scheduler
    export_hf(model, tokenizer, tmp / "hf", d, cfg.distributed.zero_stage)
    if d.is_main:
        if not cfg.distributed.zero_stage:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"step": step, "sampler": sampler.state_dict(), "world": d.world}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        _fsync_dir(tmp)
    barrier(d)
    if d.is_main:
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in list_checkpoints(output_dir)[:-cfg.checkpoint.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def _fsync_dir(path: Path) -> None:
    """Flush the files before the rename publishes them (a power cut must not expose empty files)."""
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def load(ckpt: Path, model, optimizer, scheduler, sampler, cfg, d: Dist) -> int:
    """Restore optimizer, scheduler, data position and RNG (model weights: the trainer loads
    ``ckpt/hf`` as the policy; under DeepSpeed the engine checkpoint restores them exactly). → step."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if cfg.distributed.zero_stage:
        path, _ = model.load_checkpoint(str(ckpt / "ds"), tag="state", load_optimizer_states=True,
                                        load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"{ckpt}/ds: no DeepSpeed checkpoint (saved without DeepSpeed?)")
    else:
        if not (ckpt / "optimizer.pt").exists():
            raise FileNotFoundError(f"{ckpt}: no optimizer.pt (saved under DeepSpeed? set distributed.zero_stage)")
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    sampler.load_state_dict(state["sampler"])
    rng = ckpt / "rng" / f"rank{d.rank}.pt"
    if rng.exists():  # a resume on more ranks than saved: new ranks keep their fresh seed
        set_rng_state(torch.load(rng, weights_only=False))
    return int(state["step"])
