"""Batched reward ops on ragged batches; each dispatches to Triton (CUDA tensors), the C++ op,
or a PyTorch reference (see :mod:`opgrpo_fast.ops._dispatch`). Ops resolve lazily so each
can be imported (and tested) on its own."""
import importlib

from ._dispatch import get_backend, set_backend, use_backend

_LAZY = {
    "pairwise_cosine": ".similarity",
    "greedy_match": ".greedy",
    "group_advantages": ".advantages",
    "fused_reward_advantages": ".advantages",
}
__all__ = [*_LAZY, "get_backend", "set_backend", "use_backend"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'opgrpo_fast.ops' has no attribute {name!r}")
