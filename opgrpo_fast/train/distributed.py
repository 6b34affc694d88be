"""Process group, DeepSpeed ZeRO / DDP wrapping, reductions.

``torchrun --nproc_per_node=N [--nnodes M --rdzv-endpoint ...] -m opgrpo_fast.train`` sets RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; nothing here changes between one node and many. Without
torchrun everything runs as world size 1 with no process group.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(cfg) -> Dist:
    """Join the process group when launched by torchrun; pick the device (cuda:LOCAL_RANK or cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if cuda else "gloo")
        if cfg.zero_stage:
            import deepspeed

            deepspeed.init_distributed(dist_backend=backend)
        else:
            dist.init_process_group(backend=backend)
    return Dist(rank, world, local, device)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        # gloo reduces CPU tensors, nccl CUDA tensors: move to where the backend wants them
        dev = d.device if dist.get_backend() == "nccl" else torch.device("cpu")
        buf = t.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)
    return t


def all_gather_cat(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate an equal-shaped tensor from every rank (rank order)."""
    if d.world == 1:
        return t
    dev = d.device if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(t, device=dev) for _ in range(d.world)]
    dist.all_gather(parts, t.to(dev).contiguous())
    return torch.cat(parts).to(t.device)


def deepspeed_config(cfg, micro_batch: int, grad_accum: int, world: int) -> dict:
    """ZeRO config from our tree. Gradient clipping lives here under DeepSpeed; the loss is already
    normalised over the mini-batch, so the trainer calls backward(scale_wrt_gas=False)."""
    dc = cfg.distributed
    zero: dict = {"stage": dc.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if dc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if dc.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if dc.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(cfg.model.bf16)},
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW (DeepSpeed's fused ones need CUDA builds)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if dc.deepspeed_config:
        with open(dc.deepspeed_config) as f:
            extra = json.load(f)
        out = _deep_merge(out, {k: v for k, v in extra.items() if v != "auto"})
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def wrap_policy(policy, optimizer, scheduler, cfg, d: Dist, micro_batch: int, grad_accum: int):
    """→ (engine_or_ddp, optimizer, scheduler). DeepSpeed owns bf16, ZeRO sharding, clipping and the
    accumulation boundary; DDP only syncs gradients (no_sync on all but the last micro-batch)."""
    if cfg.distributed.zero_stage:
        import deepspeed

        ds_cfg = deepspeed_config(cfg, micro_batch, grad_accum, d.world)
        engine, optimizer, _, scheduler = deepspeed.initialize(model=policy, optimizer=optimizer,
                                                               lr_scheduler=scheduler, config=ds_cfg)
        return engine, optimizer, scheduler
    policy.to(d.device)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        policy = DDP(policy, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    return policy, optimizer, scheduler


def prepare_reference(ref, cfg, d: Dist):
    """Frozen reference model. ZeRO-3: sharded (and CPU-offloaded when offload_param) through an
    inference-only DeepSpeed engine, as TRL does; otherwise a plain eval copy on the device."""
    ref.eval().requires_grad_(False)
    if cfg.distributed.zero_stage == 3:
        import deepspeed

        ds_cfg = deepspeed_config(cfg, 1, 1, d.world)
        ds_cfg.pop("gradient_clipping")
        zero = {"stage": 3, "stage3_param_persistence_threshold": 10 * 1024}
        if cfg.distributed.offload_param:
            zero["offload_param"] = {"device": "cpu"}
        ds_cfg["zero_optimization"] = zero
        return deepspeed.initialize(model=ref, config=ds_cfg)[0].module
    if cfg.model.bf16 and d.device.type == "cuda":
        ref.to(torch.bfloat16)
    return ref.to(d.device)


def unwrap(model):
    """The PolicyHead inside DDP / a DeepSpeed engine."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def gathered_for_generation(model, cfg):
    """generate() needs whole weights: under ZeRO-3 gather every shard for the duration (memory: one
    full bf16 copy, 6 GB for 3B); ZeRO-1/2 and DDP hold full weights already."""
    if cfg.distributed.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrap(model).lm
    else:
        yield unwrap(model).lm


def cleanup() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = ["Dist", "init", "barrier", "all_reduce_sum", "all_gather_cat", "wrap_policy", "prepare_reference",
           "unwrap", "gathered_for_generation", "cleanup", "deepspeed_config"]
