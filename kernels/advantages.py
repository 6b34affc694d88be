"""Fused weighted reward total + clamp + GRPO group advantages.

Layout (shared by every implementation)
---------------------------------------
``components``  (N, K) float16/bfloat16/float32/float64, per-completion reward components; the
                N rows form N / G groups of G = ``group_size`` consecutive rows.
``weights``     (K,) float, component weights.
``total``       (N,) float32: ``max(components @ weights, clamp_min)`` (no clamp when ``clamp_min`` is None).
``advantages``  (N,) float32, TRL's names: mean_g / std_g = group mean / unbiased group std
                (std_g = 0 when G == 1), std_all = unbiased std of all N totals (0 when N == 1):
                ``"group"``: (r - mean_g) / (std_g + eps); ``"batch"``: (r - mean_g) / (std_all + eps);
                ``"none"``: r - mean_g.

Everything accumulates in float32. The group mean is computed shifted by the group's first value,
mean_g = r_0 + sum(r - r_0) / G, which is the same number up to rounding but *exact* for a constant
group, so degenerate groups (all equal, or G == 1) give exact zeros, never NaN or eps-amplified noise.

Contents: ``_fused_advantages_kernel`` (Triton) -> ``fused_advantages_triton`` (launcher) ->
``fused_advantages_reference`` (pure PyTorch, loop over groups). Validation lives in the public ops,
:mod:`opgrpo_fast.ops.advantages`.
"""
from __future__ import annotations

import torch

try:  # Triton is an optional extra: the reference below must import without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

SCALES = ("group", "batch", "none")
# One program holds its whole group (BLOCK >= G rows x BLOCK_K components) in registers; GRPO groups
# are 2..64, and past this the public op takes the vectorised path instead.
MAX_GROUP = 1024


def batch_std(total: torch.Tensor) -> torch.Tensor:
    """(N,) float32 -> 0-d unbiased std of all totals, 0 when N <= 1 (launcher and vectorised path)."""
    if total.numel() <= 1:
        return total.new_zeros(())
    return total.std()


if triton is not None:

    @triton.jit
    def _fused_advantages_kernel(
        comp_ptr, w_ptr, total_ptr, adv_ptr,
        stride_n, stride_k, K, G, inv_dof, clamp_min, eps,
        BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, HAS_CLAMP: tl.constexpr, NORMALISE: tl.constexpr,
    ):
        """One program per group g: rows g*G .. g*G+G-1.

        Weighted sum over K in BLOCK_K chunks (float32), optional clamp, store ``total``; shifted group
        mean, unbiased std; store (r - mean_g) / (std_g + eps) when ``NORMALISE`` (scale "group"),
        else r - mean_g (scales "none" and "batch"; the batch division happens in the launcher).
        """
        g = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < G
        rows = g * G + offs
        offs_k = tl.arange(0, BLOCK_K)
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            mask_k = kk < K
            x = tl.load(comp_ptr + rows[:, None] * stride_n + kk[None, :] * stride_k,
                        mask=mask[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptr + kk, mask=mask_k, other=0.0).to(tl.float32)
            total += tl.sum(x * w[None, :], axis=1)
        if HAS_CLAMP:
            total = tl.maximum(total, clamp_min)
        tl.store(total_ptr + rows, total, mask=mask)

        first = tl.sum(tl.where(offs == 0, total, 0.0), axis=0)
        mean = first + tl.sum(tl.where(mask, total - first, 0.0), axis=0) / G
        diff = tl.where(mask, total - mean, 0.0)
        if NORMALISE:
            var = tl.sum(diff * diff, axis=0) * inv_dof  # 1 / max(G - 1, 1); G == 1: diff == 0, std 0
            diff = diff / (tl.sqrt(var) + eps)
        tl.store(adv_ptr + rows, diff, mask=mask)


def fused_advantages_triton(components, weights, group_size: int, scale: str = "group", eps: float = 1e-6,
                            clamp_min: float | None = 0.0):
    """Launch ``_fused_advantages_kernel`` on grid (N / G,). Inputs as in the module docstring, already
    validated (N % G == 0, G <= MAX_GROUP, scale in SCALES), on CUDA or on CPU under
    ``TRITON_INTERPRET=1``. Returns ``(total (N,) float32, advantages (N,) float32)``.

    For ``scale="batch"`` the kernel stores r - mean_g and the division by (std_all + eps) is one torch
    op afterwards: std_all needs every group's totals, i.e. a grid-wide reduction.
    """
    if triton is None:
        raise RuntimeError("fused_advantages_triton needs the triton package")
    n, k = components.shape
    g = int(group_size)
    if g > MAX_GROUP:
        raise ValueError(f"fused_advantages_triton: group_size {g} > {MAX_GROUP}; use the vectorised path")
    weights = weights.to(device=components.device, dtype=torch.float32).contiguous()
    total = torch.empty(n, dtype=torch.float32, device=components.device)
    adv = torch.empty_like(total)
    if n == 0:
        return total, adv
    _fused_advantages_kernel[(n // g,)](
        components, weights, total, adv, components.stride(0), components.stride(1), k, g, 1.0 / max(g - 1, 1),
        0.0 if clamp_min is None else float(clamp_min), float(eps),
        BLOCK=max(16, triton.next_power_of_2(g)), BLOCK_K=max(2, min(triton.next_power_of_2(max(k, 1)), 8)),
        HAS_CLAMP=clamp_min is not None, NORMALISE=scale == "group",
    )
    if scale == "batch":
        adv.div_(batch_std(total) + eps)
    return total, adv


def fused_advantages_reference(components, weights, group_size: int, scale: str = "group", eps: float = 1e-6,
                               clamp_min: float | None = 0.0, upcast: bool = True):
    """Pure-PyTorch reference, a Python loop over groups of the literal formulas.

    ``upcast=True`` computes in ``promote_types(dtype, float32)`` (float64 inputs give a float64
    reference); ``upcast=False`` in the components' dtype (the "same-dtype PyTorch" error of the
    flash-attention accuracy rule). Returns ``(total (N,) float32, advantages (N,) float32)``.
    """
    dtype = torch.promote_types(components.dtype, torch.float32) if upcast else components.dtype
    weights = torch.as_tensor(weights, device=components.device)
    total = components.to(dtype) @ weights.to(dtype)
    if clamp_min is not None:
        total = total.clamp_min(clamp_min)
    g = int(group_size)
    adv = torch.empty_like(total)
    for s in range(0, total.numel(), g):
        r = total[s:s + g]
        mean = r[0] + (r - r[0]).sum() / g
        std = ((r - mean) ** 2).sum().div(g - 1).sqrt() if g > 1 else torch.zeros((), dtype=dtype)
        adv[s:s + g] = (r - mean) / (std + eps) if scale == "group" else r - mean
    if scale == "batch":
        std_all = ((total - total.mean()) ** 2).sum().div(total.numel() - 1).sqrt() if total.numel() > 1 else 0.0
        adv = adv / (std_all + eps)
    return total.float(), adv.float()
