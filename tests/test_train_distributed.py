"""2-process torchrun runs (gloo, CPU) of the tiny preset: plain DDP and DeepSpeed ZeRO-2. Both ranks
must end with identical weights; DeepSpeed checkpoints save, resume and export to one HF folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_args

from opgrpo_fast.train.loop import weights_fingerprint
from opgrpo_fast.train.metrics import read_metrics

TESTS = Path(__file__).resolve().parent


def torchrun(args: list[str], timeout: int = 240) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "opgrpo_fast.train", *args]
    r = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]


def _fingerprints(out: Path) -> list[float]:
    return json.loads((out / "run_summary.json").read_text())["weights_fingerprint_per_rank"]


@pytest.mark.slow
def test_torchrun_ddp_ranks_identical(tmp_path, tiny_dir):
    out = tmp_path / "ddp"
    torchrun(tiny_args(out, tiny_dir, steps=2))
    fp = _fingerprints(out)
    assert len(fp) == 2 and fp[0] == fp[1]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_torchrun_deepspeed_zero2_save_resume_export(tmp_path, tiny_dir):
    out = tmp_path / "ds"
    ds = {"distributed.zero_stage": 2, "rollout.micro_batch_size": 2}  # 2 micro-batches: DeepSpeed accumulates
    torchrun(tiny_args(out, tiny_dir, steps=2, **ds))
    fp = _fingerprints(out)
    assert fp[0] == fp[1]
    ck = out / "step-00000002"
    assert (ck / "ds" / "state").is_dir() and (ck / "hf" / "model.safetensors").exists()
    # resume from the DeepSpeed checkpoint for one more step
    torchrun(tiny_args(out, tiny_dir, steps=3, resume="latest", **ds))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["start_step"] == 2 and summary["weights_fingerprint_per_rank"][0] == summary[
        "weights_fingerprint_per_rank"][1]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    # the exported HF folder holds the trained weights (fp32 run: exactly the engine's)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(out / "step-00000003" / "hf", dtype=torch.float32)

    class Wrap(torch.nn.Module):  # the trainer fingerprints PolicyHead(lm): same parameters, same order
        def __init__(self):
            super().__init__()
            self.lm = lm

    assert weights_fingerprint(Wrap()) == pytest.approx(summary["weights_fingerprint_per_rank"][0], rel=1e-12)
    assert fp[0] != summary["weights_fingerprint_per_rank"][0]  # step 3 changed the weights


@pytest.mark.slow
def test_torchrun_deepspeed_zero3_reference_sharded_and_export(tmp_path, tiny_dir):
    """ZeRO-3: policy and (β > 0) reference model sharded, generate() under gathered parameters,
    and the 16-bit consolidated export loads as one HF model."""
    out = tmp_path / "z3"
    torchrun(tiny_args(out, tiny_dir, steps=2, distributed__zero_stage=3, rollout__micro_batch_size=2,
                       checkpoint__interval=2))
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["kl"] == r["kl"] for r in rows)  # KL finite: ref ran
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(out / "step-00000002" / "hf", dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in lm.parameters())
