"""Fused reward total + clamp + GRPO group advantages on a rollout-sized batch: N = 10240
completions in groups of G = 10, K = 4 reward components (coverage, format, tag, uniqueness).

Group ``fused_reward_advantages``: the baseline is a per-group Python/numpy loop (weighted total,
clamp, mean, unbiased std per group); then the per-group PyTorch reference, the vectorised CPU path,
the public op (validation + dispatch), and the Triton kernel when CUDA is available. Group
``fused_reward_advantages_cuda_large`` (CUDA only): the Triton kernel and the public op on the batch
tiled ``LARGE_TILE`` times (2.6 M rows, ~63 MB), where the kernel is bandwidth- rather than launch-bound.

Every member records ``extra_info["bytes"]``: the bytes the op must read (components, weights) and
write (total, advantages, float32) for its input; ``bench/gpu_report.py`` turns it into GB/s.

Run: ``python -m pytest bench/bench_advantages.py --benchmark-only -q -p no:cacheprovider``
"""
import numpy as np
import pytest
import torch

from opgrpo_fast import ops
from opgrpo_fast.kernels.advantages import fused_advantages_reference, fused_advantages_triton
from opgrpo_fast.ops.advantages import fused_advantages_vectorised
from _benchutil import CUDA, cuda_synced, timed

N, G, K, EPS = 10240, 10, 4, 1e-6
LARGE_TILE = 256
WEIGHTS = [1.0, 0.5, 1.0, 0.5]


def make_batch(device="cpu", tile=1):
    """(components (N * tile, K), weights (K,)); ``tile`` > 1 repeats the N rows (whole groups)."""
    g = torch.Generator().manual_seed(0)
    comps = torch.stack([torch.randint(0, 4, (N,), generator=g).float(),  # bucketed coverage
                         torch.rand(N, generator=g),  # format score
                         -2.0 * (torch.rand(N, generator=g) < 0.1).float(),  # tag penalty
                         torch.rand(N, generator=g)], dim=1)  # uniqueness
    return comps.repeat(tile, 1).to(device), torch.tensor(WEIGHTS, device=device)


def op_bytes(comps, weights) -> int:
    """Compulsory traffic of one call: read components and weights, write total and advantages (float32)."""
    return comps.numel() * comps.element_size() + weights.numel() * 4 + 2 * comps.shape[0] * 4


def per_group_numpy(comps, weights, group_size=G, scale="group", eps=EPS, clamp_min=0.0):
    """One Python iteration per group with numpy: total, clamp, mean, std(ddof=1)."""
    c, w = comps.numpy(), weights.numpy()
    total, adv = np.empty(len(c), np.float32), np.empty(len(c), np.float32)
    for s in range(0, len(c), group_size):
        r = np.maximum(c[s:s + group_size] @ w, clamp_min)
        total[s:s + group_size] = r
        std = r.std(ddof=1) if group_size > 1 else 0.0
        adv[s:s + group_size] = (r - r.mean()) / (std + eps)
    return total, adv


def public_op(comps, weights, group_size=G):
    with ops.use_backend("auto"):
        return ops.fused_reward_advantages(comps, weights, group_size)


CASES = {  # name: (function, device, role)
    "baseline_per_group_numpy": (per_group_numpy, "cpu", "baseline"),
    "reference_per_group_torch": (fused_advantages_reference, "cpu", "reference"),
    "vectorised_cpu": (fused_advantages_vectorised, "cpu", "vectorised"),
    "public_op_cpu": (public_op, "cpu", "public op (validation + dispatch)"),
    "triton_cuda": (cuda_synced(fused_advantages_triton), "cuda", "triton"),
}


@pytest.mark.benchmark(group="fused_reward_advantages")
@pytest.mark.parametrize("name", list(CASES))
def test_fused_reward_advantages(benchmark, name):
    fn, device, role = CASES[name]
    comps, weights = make_batch(device if device == "cpu" or CUDA else "cpu")
    total, adv = timed(benchmark, fn, (comps, weights, G), device, role=role, N=N, G=G, K=K, dtype="float32",
                       bytes=op_bytes(comps, weights))
    want = per_group_numpy(comps.cpu(), weights.cpu())[1]
    np.testing.assert_allclose(np.asarray(torch.as_tensor(adv).cpu()), want, rtol=1e-4, atol=1e-4)


@pytest.mark.benchmark(group="fused_reward_advantages_cuda_large")
@pytest.mark.parametrize("name", ["triton_cuda", "public_op_cuda"])
def test_fused_reward_advantages_cuda_large(benchmark, name):
    """The batch tiled LARGE_TILE times on CUDA: achieved bandwidth of the kernel (and the op)."""
    if not CUDA:
        pytest.skip("CUDA benchmark")
    fn = cuda_synced(fused_advantages_triton if name == "triton_cuda" else public_op)
    comps, weights = make_batch("cuda", tile=LARGE_TILE)
    total, adv = timed(benchmark, fn, (comps, weights, G), "cuda", role=name, N=N * LARGE_TILE, G=G, K=K,
                       dtype="float32", bytes=op_bytes(comps, weights))
    want = np.tile(per_group_numpy(*make_batch())[1], LARGE_TILE)  # same groups, tiled
    np.testing.assert_allclose(adv.cpu().numpy(), want, rtol=1e-4, atol=1e-4)
