"""Batched reward ops on ragged batches; each dispatches to Triton (CUDA tensors), the C++ op,
or a PyTorch reference (see :mod:`opgrpo_fast.ops._dispatch`)."""
from ._dispatch import get_backend, set_backend, use_backend
from .advantages import fused_reward_advantages, group_advantages
from .greedy import greedy_match
from .similarity import pairwise_cosine

__all__ = [
    "pairwise_cosine",
    "greedy_match",
    "group_advantages",
    "fused_reward_advantages",
    "get_backend",
    "set_backend",
    "use_backend",
]
