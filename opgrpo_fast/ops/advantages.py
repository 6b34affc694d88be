"""GRPO advantages: ``fused_reward_advantages`` (weighted total + clamp + group normalisation) and
``group_advantages`` (the same with one component of weight 1 and no clamp).

Dispatch (see :mod:`opgrpo_fast.ops._dispatch`): the Triton kernel for CUDA tensors (or when the
``triton`` backend is forced; groups larger than ``MAX_GROUP`` take the vectorised path), the
vectorised PyTorch path below otherwise, the per-group reference when the backend is ``reference``.
Formulas and layout: :mod:`opgrpo_fast.kernels.advantages`.
"""
from __future__ import annotations

import numbers

import torch

from opgrpo_fast.kernels.advantages import (
    MAX_GROUP,
    SCALES,
    batch_std,
    fused_advantages_reference,
    fused_advantages_triton,
)

from ._dispatch import get_backend, want_triton

__all__ = ["group_advantages", "fused_reward_advantages", "fused_advantages_vectorised"]


def _check_scale(scale) -> str:
    if scale is True:  # TRL's boolean ``scale_rewards``
        return "group"
    if scale is False:
        return "none"
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    return scale


def _check_group(n: int, group_size) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise ValueError(f"group_size must be an integer, got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if n % group_size != 0:
        raise ValueError(f"number of rewards N={n} is not divisible by group_size G={group_size}")
    return int(group_size)


def _check_values(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"{name} must be a real tensor, got dtype {x.dtype}")
    # aminmax propagates NaN/inf and costs far less than materialising isfinite(x)
    if x.dtype.is_floating_point and x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        raise ValueError(f"{name} contains NaN/inf")


def fused_advantages_vectorised(components, weights, group_size: int, scale: str = "group", eps: float = 1e-6,
                                clamp_min: float | None = 0.0):
    """Vectorised PyTorch path: one matvec, then per-group statistics on ``total.view(-1, G)``.
    Same contract as the kernel launcher; returns ``(total (N,) float32, advantages (N,) float32)``."""
    total = components.float() @ weights.to(device=components.device, dtype=torch.float32)
    if clamp_min is not None:
        total = total.clamp_min(clamp_min)
    if total.numel() == 0:
        return total, total.clone()
    r = total.view(-1, group_size)
    first = r[:, :1]
    diff = r - (first + (r - first).sum(1, keepdim=True) / group_size)
    if scale == "group":
        std = diff.square().sum(1, keepdim=True).div_(max(group_size - 1, 1)).sqrt_()
        diff = diff / (std + eps)
    elif scale == "batch":
        diff = diff / (batch_std(total) + eps)
    return total, diff.reshape(-1)


def _advantages(components, weights, group_size, scale, eps, clamp_min):
    if get_backend() == "reference":
        return fused_advantages_reference(components, weights, group_size, scale, eps, clamp_min)
    if want_triton(components) and group_size <= MAX_GROUP:
        return fused_advantages_triton(components, weights, group_size, scale, eps, clamp_min)
    return fused_advantages_vectorised(components, weights, group_size, scale, eps, clamp_min)


def fused_reward_advantages(components, weights, group_size: int, scale: str = "group", eps: float = 1e-6,
                            clamp_min: float | None = 0.0):
    """Weighted reward total and its group advantages in one pass.

    Args:
        components: (N, K) real tensor of reward components (N a multiple of ``group_size``).
        weights: (K,) tensor or Python sequence of weights.
        group_size: G >= 1, completions per prompt (consecutive rows).
        scale: ``"group"`` | ``"batch"`` | ``"none"`` (TRL's ``scale_rewards``; True/False mean
            "group"/"none").
        eps: added to the std before dividing.
        clamp_min: ``total = max(components @ weights, clamp_min)``; None disables the clamp.
    Returns:
        ``(total (N,) float32, advantages (N,) float32)``.
    Raises:
        ValueError: bad shapes, N % G != 0, G < 1, unknown scale, NaN/inf inputs.
    """
    _check_values("components", components, 2)
    weights = torch.as_tensor(weights, device=components.device)
    _check_values("weights", weights, 1)
    if weights.numel() != components.shape[1]:
        raise ValueError(f"weights has {weights.numel()} entries but components has K={components.shape[1]} columns")
    g = _check_group(components.shape[0], group_size)
    return _advantages(components, weights, g, _check_scale(scale), eps, clamp_min)


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages of (N,) ``rewards`` in groups of ``group_size`` consecutive rows (computed in
    float32, returned in the rewards' dtype, float32 for integer rewards). Same kernel as
    :func:`fused_reward_advantages` with K = 1, weight 1 and no clamp; same ``ValueError`` cases."""
    _check_values("rewards", rewards, 1)
    g = _check_group(rewards.shape[0], group_size)
    ones = torch.ones(1, device=rewards.device)
    _, adv = _advantages(rewards[:, None], ones, g, _check_scale(scale), eps, None)
    return adv.to(rewards.dtype if rewards.dtype.is_floating_point else torch.float32)
